// Bit helpers for the kernels' branch-free loops: a block of 0/1 bytes as a bit mask, whose set
// bits a loop then visits (count_trailing_zeros), so the work follows the few set positions and
// no branch depends on each byte.
#pragma once

#include <cstdint>
#include <cstring>

namespace fastmask {

// Bit j set where sel[j] != 0, for 0/1 bytes sel[0 .. n), n <= 64.
inline uint64_t selected_bits(const uint8_t* sel, int n) {
  uint64_t bits = 0;
  int j = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  for (; j + 8 <= n; j += 8) {  // eight 0/1 bytes -> eight bits in one multiply
    uint64_t x;
    std::memcpy(&x, sel + j, 8);
    bits |= ((x * 0x0102040810204080ull) >> 56) << j;
  }
#endif
  for (; j < n; ++j) bits |= static_cast<uint64_t>(sel[j] != 0) << j;
  return bits;
}

inline int count_trailing_zeros(uint64_t x) {  // x != 0
#if defined(__GNUC__) || defined(__clang__)
  return __builtin_ctzll(x);
#else
  int n = 0;
  while (!(x & 1)) x >>= 1, ++n;
  return n;
#endif
}

}  // namespace fastmask
