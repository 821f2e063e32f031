// `mayhem-exec`: the exec restarter's wrapper (restart/exec_wrapper.hpp). Not for people.
#include "restart/exec_wrapper.hpp"

int main(int argc, char** argv) {
    return mayhem::run_exec_wrapper(argc - 1, argv + 1);
}
