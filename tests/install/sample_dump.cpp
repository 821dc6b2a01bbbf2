// The C++ twin of tests/c/sample_dump.c, built against an installed libpdiff with CMake
// (tests/install/CMakeLists.txt): open BUNDLE_DIR on the CPU, sample n = 3 vectors with seed
// 42, DDIM 10 steps, write them as raw little-endian f32 to OUT_FILE. scripts/test.sh compares
// the file with the one the full build in the checkout wrote: they must be equal bit for bit.
#include <pdiff.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>

int main(int argc, char** argv) {
    if (argc != 3) {
        std::cerr << "usage: " << argv[0] << " BUNDLE_DIR OUT_FILE\n";
        return 2;
    }
    try {
        pdiff::check_abi();
#if defined(PDIFF_FEATURE_TRAIN)
        const bool header_has_training = true;
#else
        const bool header_has_training = false;
#endif
        // The installed header and the installed library agree on what this build can do.
        const bool library_has_training = (pdiff_capabilities() & PDIFF_CAPABILITY_TRAIN) != 0;
        if (header_has_training != library_has_training) {
            std::cerr << "pdiff_features.h says training " << header_has_training << ", the library "
                      << library_has_training << "\n";
            return 1;
        }
        pdiff::Sampler s(argv[1], pdiff::sampler_options(PDIFF_PROVIDER_CPU));
        std::vector<float> out = s.sample(3, pdiff::ddim(42, 10));
        std::ofstream f(argv[2], std::ios::binary);
        f.write(reinterpret_cast<const char*>(out.data()), static_cast<std::streamsize>(out.size() * sizeof(float)));
        if (!f) {
            std::cerr << "cannot write " << argv[2] << "\n";
            return 1;
        }
        std::cout << "sample_dump_cpp: 3 x " << s.param_count() << " floats (" << s.backend() << ", training "
                  << (library_has_training ? "yes" : "no") << ") -> " << argv[2] << "\n";
    } catch (const pdiff::Error& e) {
        std::cerr << "pdiff error " << pdiff::status_name(e.status()) << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}
