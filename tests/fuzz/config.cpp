// The worker's config file (--config FILE), through parse_worker_config() as `mayhem worker
// --config FILE` calls it. Properties: no input crashes or throws past it; the answer is a
// configuration (exit 0) or an error (exit 2) of one line with no control character (the
// file's text is echoed in it).
#include "config/config.hpp"

#include "check.hpp"

#include <cstdint>
#include <sstream>
#include <string>
#include <sys/mman.h>
#include <unistd.h>

using namespace mayhem;

namespace {

// One in-memory file, rewritten per input and opened by path as the worker opens its file.
int config_fd() {
    static int fd = ::memfd_create("mayhem-fuzz-config", 0);
    FUZZ_CHECK(fd >= 0);
    return fd;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    int fd = config_fd();
    FUZZ_CHECK(::ftruncate(fd, 0) == 0);
    FUZZ_CHECK(::pwrite(fd, data, size, 0) == static_cast<ssize_t>(size));
    std::string path = "/proc/self/fd/" + std::to_string(fd);

    std::ostringstream out, err;
    int code = -1;
    auto cfg = parse_worker_config({"--config", path}, out, err, code);
    FUZZ_CHECK(out.str().empty());
    if (cfg) {
        FUZZ_CHECK(code == 0);
        FUZZ_CHECK(err.str().empty());
        return 0;
    }
    FUZZ_CHECK(code == 2);
    std::string e = err.str();
    FUZZ_CHECK(e.size() > 1 && e.back() == '\n');
    e.pop_back();
    for (char c : e)
        FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20 && c != 0x7f);
    return 0;
}
