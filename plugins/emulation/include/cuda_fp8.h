// Stand-in for the CUDA toolkit header of the same name when building against the CPU emulation.
#pragma once
#include "../cuda_emulation.h"
