// CPU feature detection and the per-family ISA override (see isa.h).
#include "isa.h"

#include <atomic>

namespace fastmask {
namespace {

Isa detect() {
#if FM_HAVE_ISA_VARIANTS
  __builtin_cpu_init();
  const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                  __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                  __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq") &&
                  __builtin_cpu_supports("avx512vl");
  return v4 ? Isa::kAvx512 : v3 ? Isa::kAvx2 : Isa::kDefault;
#else
  return Isa::kDefault;
#endif
}

std::atomic<int> limits[static_cast<int>(IsaFamily::kNumFamilies)] = {
    {static_cast<int>(Isa::kAvx512)}, {static_cast<int>(Isa::kAvx512)}};

}  // namespace

Isa cpu_isa() {
  static const Isa isa = detect();
  return isa;
}

Isa active_isa(IsaFamily family) {
  const int limit = limits[static_cast<int>(family)].load(std::memory_order_relaxed);
  const int cpu = static_cast<int>(cpu_isa());
  return static_cast<Isa>(cpu < limit ? cpu : limit);
}

void set_isa_limit(IsaFamily family, Isa limit) {
  limits[static_cast<int>(family)].store(static_cast<int>(limit), std::memory_order_relaxed);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "default";
  }
}

bool parse_isa(const std::string& name, Isa* isa) {
  if (name == "default") return *isa = Isa::kDefault, true;
  if (name == "avx2") return *isa = Isa::kAvx2, true;
  if (name == "avx512") return *isa = Isa::kAvx512, true;
  return false;
}

}  // namespace fastmask
