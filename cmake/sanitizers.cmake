# MAYHEM_SANITIZE=address (ASan + UBSan) or thread (TSan). Sanitized builds keep the coroutine
# frame pool that production uses (lib/runtime/frame_pool.hpp): under ASan it poisons free slots,
# so a use-after-free of a frame is still caught.
set(MAYHEM_SANITIZE "" CACHE STRING "address or thread, empty for none")
# MAYHEM_FUZZ: the libFuzzer build (`make fuzz`, clang only): the code under test gets libFuzzer's
# coverage instrumentation and ASan + UBSan; tests/fuzz links each target with libFuzzer's main.
option(MAYHEM_FUZZ "Build the libFuzzer targets of tests/fuzz (clang) instead of the worker" OFF)
add_library(mayhem_sanitizers INTERFACE)
if(MAYHEM_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "MAYHEM_FUZZ needs clang (CMAKE_CXX_COMPILER=clang++), not ${CMAKE_CXX_COMPILER_ID}")
  endif()
  target_compile_options(mayhem_sanitizers INTERFACE -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(mayhem_sanitizers INTERFACE -fsanitize=address,undefined)
elseif(MAYHEM_SANITIZE STREQUAL "address")
  target_compile_options(mayhem_sanitizers INTERFACE -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(mayhem_sanitizers INTERFACE -fsanitize=address,undefined)
elseif(MAYHEM_SANITIZE STREQUAL "thread")
  target_compile_options(mayhem_sanitizers INTERFACE -fsanitize=thread -fno-omit-frame-pointer)
  target_link_options(mayhem_sanitizers INTERFACE -fsanitize=thread)
elseif(NOT MAYHEM_SANITIZE STREQUAL "")
  message(FATAL_ERROR "MAYHEM_SANITIZE must be address, thread or empty, not '${MAYHEM_SANITIZE}'")
endif()
