# Warnings are errors, for our code only (not for the Debian headers we include).
add_library(mayhem_warnings INTERFACE)
target_compile_options(mayhem_warnings INTERFACE
  -Wall -Wextra -Werror -Wshadow -Wnon-virtual-dtor -Wpedantic -Wno-missing-field-initializers)
