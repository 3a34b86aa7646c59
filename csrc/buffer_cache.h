// Gradient buffers for the C++ cross-entropy (fastmask/cross_entropy.py allocates them with
// ce_alloc): uninitialised, aligned, and kept in a small cache of freed blocks so a training loop
// that asks for the same sizes every step does not pay first-touch page faults each time.
#pragma once

#include <pybind11/pybind11.h>

namespace fastmask {

// Defines ce_alloc, ce_cache_clear, ce_cache_bytes, ce_cache_enable and ce_cache_enabled.
void register_buffer_cache(pybind11::module_& m);

}  // namespace fastmask
