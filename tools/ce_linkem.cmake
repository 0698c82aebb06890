# ce-linkem: the command-line front end of the link emulator (linkem/).
add_executable(ce-linkem ${CMAKE_CURRENT_LIST_DIR}/ce_linkem.cpp)
target_link_libraries(ce-linkem PRIVATE ce_linkem)
target_include_directories(ce-linkem PRIVATE ${PROJECT_SOURCE_DIR})
