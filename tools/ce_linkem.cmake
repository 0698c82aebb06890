# ce_linkem: the userspace TCP link emulator (delay, jitter, bandwidth; tc netem stand-in)
# and its command-line front end ce-linkem. Needs only Boost.Asio (headers; Boost.System
# is header-only since 1.69) and threads, not libtorch.
find_package(Boost 1.69 REQUIRED)

add_library(ce_linkem STATIC ${CMAKE_CURRENT_LIST_DIR}/linkem/link_emulator.cpp)
target_include_directories(ce_linkem PUBLIC ${PROJECT_SOURCE_DIR})
# Include directories rather than the Boost::headers target: that imported target exists
# only in this folder, and consumers elsewhere (tests/linkem) could not resolve it.
target_include_directories(ce_linkem SYSTEM PRIVATE ${Boost_INCLUDE_DIRS})
target_link_libraries(ce_linkem PUBLIC Threads::Threads)

add_executable(ce-linkem ${CMAKE_CURRENT_LIST_DIR}/linkem/ce_linkem.cpp)
target_link_libraries(ce-linkem PRIVATE ce_linkem)
target_include_directories(ce-linkem PRIVATE ${PROJECT_SOURCE_DIR})
