// Instruction-set dispatch shared by the kernels: the CPU's features are detected once, each
// kernel family compiles its hot loops once per ISA level (FM_TARGET_* on a wrapper around an
// always-inline or flattened body) and picks a variant per call with active_isa(family). A test
// override caps the level per family (_masking_isa, _ce_isa), so every variant can be checked
// against the others on one machine. Integer kernels (masking) give identical results at every
// level; float loops may differ in the last bit where the compiler contracts a * b + c into an FMA
// (avx2 and avx512 have FMA, the baseline has not).
#pragma once

#include <string>

namespace fastmask {

// ISA levels, in increasing order: x86-64 baseline, x86-64-v3 (AVX2, FMA, BMI), x86-64-v4
// (AVX-512). Other architectures have kDefault only.
enum class Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2 };

// Kernel families with their own override.
enum class IsaFamily : int { kMasking = 0, kCrossEntropy = 1, kNumFamilies = 2 };

// The best level this CPU supports (detected on first use, then cached).
Isa cpu_isa();

// The level `family` runs at: cpu_isa() capped by the family's override (no cap by default).
Isa active_isa(IsaFamily family);

// Caps `family` at `limit` (tests); kAvx512 removes the cap.
void set_isa_limit(IsaFamily family, Isa limit);

// "default", "avx2", "avx512"; parse_isa returns false for any other name.
const char* isa_name(Isa isa);
bool parse_isa(const std::string& name, Isa* isa);

}  // namespace fastmask

// Function attributes compiling one variant for a level (empty where unsupported: the variant
// is then the baseline code, and cpu_isa() never reports the level).
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#define FM_HAVE_ISA_VARIANTS 1
#define FM_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))
#define FM_TARGET_AVX512 __attribute__((target("arch=x86-64-v4")))
#else
#define FM_HAVE_ISA_VARIANTS 0
#define FM_TARGET_AVX2
#define FM_TARGET_AVX512
#endif

// FM_INLINE: inlined into every variant that calls it (compiled for the caller's ISA);
// FM_FLATTEN: everything a variant calls is inlined into it; FM_NOINLINE: a variant stays one.
#if defined(__GNUC__) || defined(__clang__)
#define FM_INLINE inline __attribute__((always_inline))
#define FM_FLATTEN __attribute__((flatten))
#define FM_NOINLINE __attribute__((noinline))
#else
#define FM_INLINE inline
#define FM_FLATTEN
#define FM_NOINLINE
#endif

// Defines `name` params, which runs `name##_impl` args compiled for the level
// active_isa(family) picks. `head` is empty, or a template head for loops templated on a tag
// argument (the args must then deduce it). `name##_impl` should be FM_INLINE.
#define FM_ISA_VARIANTS(family, head, ret, name, params, args)                               \
  head FM_TARGET_AVX512 FM_NOINLINE ret name##_avx512 params { return name##_impl args; } \
  head FM_TARGET_AVX2 FM_NOINLINE ret name##_avx2 params { return name##_impl args; }     \
  head FM_NOINLINE ret name##_default params { return name##_impl args; }                 \
  head inline ret name params {                                                           \
    switch (::fastmask::active_isa(family)) {                                            \
      case ::fastmask::Isa::kAvx512: return name##_avx512 args;                           \
      case ::fastmask::Isa::kAvx2: return name##_avx2 args;                               \
      default: return name##_default args;                                                \
    }                                                                                     \
  }
