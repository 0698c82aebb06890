if(TARGET ce_linkem)
  # ce-bench's parts: the plan and its modes, the checkpoint format, the tables and invariants.
  add_library(ce_bench_parts STATIC bench/bench_run.cpp bench/checkpoint.cpp bench/report.cpp)
  target_link_libraries(ce_bench_parts PUBLIC ce_actors)
  target_include_directories(ce_bench_parts PUBLIC ${PROJECT_SOURCE_DIR})
  add_executable(ce-bench ce_bench.cpp)
  target_link_libraries(ce-bench PRIVATE ce_bench_parts ce_actors ce_linkem)
  target_include_directories(ce-bench PRIVATE ${PROJECT_SOURCE_DIR})
endif()
