add_executable(ce-node ce_node.cpp)
target_link_libraries(ce-node PRIVATE ce_actors nlohmann_json::nlohmann_json)
target_include_directories(ce-node PRIVATE ${PROJECT_SOURCE_DIR})
