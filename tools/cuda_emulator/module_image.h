// The "CUBIN" the emulated NVRTC (nvrtc.cpp) hands out and the emulated driver (driver.cpp)
// loads: this marker, then the path of the shared library the module was built into. One
// definition for both sides of the format.

#ifndef CACTUS_EMU_MODULE_IMAGE_H
#define CACTUS_EMU_MODULE_IMAGE_H

namespace cactus_emu {
inline const char* const MODULE_IMAGE_MARKER = "CACTUS-EMULATED-MODULE\n";
}

#endif   // CACTUS_EMU_MODULE_IMAGE_H
