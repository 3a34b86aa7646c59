// The C++ masked-position cross-entropy: forward loss, the gradient of the logits computed in
// the same pass (so backward only scales), and the helpers the op layer needs around it.
//
// Work is over the labelled rows only (`rows`, an int64 list the op layer builds), threaded with
// parallel_for, one row per task item. A row is processed in three cache-resident passes:
//   1. m   = max_j x_j
//   2. e_j = exp(x_j - m), s = sum_j e_j, sx = sum_j x_j  (e_j kept in the gradient row)
//   3. g_j = scale * ((1 + 2 z lse) e_j / s - eps / V) - scale (1 - eps) [j == y]
// with lse = m + log s and loss = lse - (1 - eps) x_y - eps/V sx + z lse^2, so exp is evaluated
// once per element. bf16/fp16 rows arrive as 16-bit integer bits and are widened into a
// per-thread fp32 scratch row; the gradient is narrowed back with round-to-nearest-even.
//
// The inner loops use gcc/clang 16-lane vector types (no -ffast-math is needed: the float
// reductions keep 16 partial sums explicitly, in fp32 per 1024 elements, then in double), and
// exp is a Cody-Waite range reduction plus a degree-7 polynomial (under 1 ulp for x <= 0, exactly
// 0 below -87.5). On x86-64 the hot loops are compiled for AVX-512 / AVX2 / baseline and picked
// per call (isa.h; _ce_isa overrides it for tests); compilers without vector extensions run scalar loops with
// the same arithmetic.
//
// The binding checks buffer shapes and dtypes (memory safety); the kernels trust the values:
// labels are validated by the op layer (fastmask/cross_entropy.py).
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"  // 64-byte vectors passed between inline helpers
#endif
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "checks.h"
#include "common.h"
#include "isa.h"

namespace py = pybind11;

// Each hot loop is written once as an FM_INLINE `name_impl` and compiled per ISA level by
// FM_CE_VARIANTS (isa.h's FM_ISA_VARIANTS for this family), which also defines `name` choosing
// the variant per call. Helpers are FM_INLINE so they are compiled into every variant: a call
// would pass vectors with the caller's and the callee's ABIs disagreeing, and would run the
// baseline ISA.
#define FM_CE_VARIANTS(head, ret, name, params, args) \
  FM_ISA_VARIANTS(IsaFamily::kCrossEntropy, head, ret, name, params, args)

namespace fastmask {
namespace {

enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };
constexpr int64_t kBlock = 1024;  // elements per fp32 partial sum before adding into double

// ---------------------------------------------------------------- scalar building blocks
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// exp(x) for x <= 88; exactly 0 below -87.5 (keeps 2^n a normal number) and for -inf; NaN
// propagates. Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then e^r by Taylor to r^7.
inline float fast_exp(float x) {
  const float xc = x < -87.5f ? -87.5f : x;
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - n * 0.693145751953125f;  // ln2 high part: n * it is exact
  r = r - n * 1.428606820309417232e-6f;   // ln2 low part
  float p = 1.98412698e-4f;               // 1/7!
  p = p * r + 1.38888889e-3f;             // 1/6!
  p = p * r + 8.33333333e-3f;             // 1/5!
  p = p * r + 4.16666667e-2f;             // 1/4!
  p = p * r + 1.66666667e-1f;             // 1/3!
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float scale = bits_to_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  const float result = p * scale;
  return x < -87.5f ? 0.0f : result;
}

inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
}

inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7FFFu;
  const float subnormal = static_cast<float>(static_cast<int32_t>(em)) * 5.9604644775390625e-08f;  // em * 2^-24
  const uint32_t normal = (em << 13) + 0x38000000u;  // rebias the exponent by 127 - 15
  const uint32_t inf_nan = (em << 13) | 0x7F800000u;
  uint32_t bits = em >= 0x7C00u ? inf_nan : normal;
  bits = em < 0x0400u ? float_to_bits(subnormal) : bits;
  return bits_to_float(bits | sign);
}

inline uint16_t float_to_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7FFFFFFFu;
  // Normal range: rebias, round to nearest even on the 13 dropped bits.
  const uint32_t normal = (a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
  // Subnormal range: adding 0.5f aligns the half's 2^-24 grid to the float's last bit.
  const uint32_t subnormal = float_to_bits(bits_to_float(a) + 0.5f) - 0x3F000000u;
  uint32_t h = a < 0x38800000u ? subnormal : normal;
  h = a >= 0x477FF000u ? 0x7C00u : h;  // rounds to infinity
  h = a > 0x7F800000u ? 0x7E00u : h;   // NaN
  return static_cast<uint16_t>(h | sign);
}

// ---------------------------------------------------------------- vectors
// gcc/clang vector extensions: 16 lanes, lowered to whatever the clone's ISA has (4 x SSE,
// 2 x AVX2, 1 x AVX-512). Other compilers run the scalar loops, which compute the same values.
#if defined(__GNUC__) || defined(__clang__)
#define FM_VEC 1
typedef float vf __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));

FM_INLINE vf splat(float v) { return vf{} + v; }
FM_INLINE vi splat_i(int32_t v) { return vi{} + v; }
FM_INLINE vf load_vf(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FM_INLINE void store_vf(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
FM_INLINE vu load_vh(const uint16_t* p) {
  vh v;
  std::memcpy(&v, p, sizeof v);
  return __builtin_convertvector(v, vu);
}
FM_INLINE void store_vh(uint16_t* p, vu v) {
  const vh h = __builtin_convertvector(v, vh);
  std::memcpy(p, &h, sizeof h);
}

// The same arithmetic as fast_exp, lane-wise.
FM_INLINE vf fast_exp(vf x) {
  const vi under = x < -87.5f;
  const vf xc = under ? splat(-87.5f) : x;
  const vf n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vf r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606820309417232e-6f;
  vf p = splat(1.98412698e-4f);
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vf scale = (vf)((__builtin_convertvector(n, vi) + 127) << 23);
  return under ? splat(0.0f) : p * scale;
}

FM_INLINE vf bf16_to_float(vu h) { return (vf)(h << 16); }
FM_INLINE vu float_to_bf16(vf f) {
  const vu u = (vu)f;
  const vu rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return (vu)(((u & 0x7FFFFFFFu) > 0x7F800000u) ? (vi)((u >> 16) | 0x40u) : (vi)rounded);
}
FM_INLINE vf half_to_float(vu h) {
  const vu sign = (h & 0x8000u) << 16;
  const vu em = h & 0x7FFFu;
  const vf subnormal = __builtin_convertvector((vi)em, vf) * 5.9604644775390625e-08f;
  const vu normal = (em << 13) + 0x38000000u;
  const vu inf_nan = (em << 13) | 0x7F800000u;
  vi bits = em >= 0x7C00u ? (vi)inf_nan : (vi)normal;
  bits = em < 0x0400u ? (vi)subnormal : bits;
  return (vf)((vu)bits | sign);
}
FM_INLINE vu float_to_half(vf f) {
  const vu u = (vu)f;
  const vu sign = (u >> 16) & 0x8000u;
  const vu a = u & 0x7FFFFFFFu;
  const vu normal = (a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u)) >> 13;
  const vu subnormal = (vu)((vf)a + 0.5f) - 0x3F000000u;
  vi h = a < 0x38800000u ? (vi)subnormal : (vi)normal;
  h = a >= 0x477FF000u ? splat_i(0x7C00) : h;
  h = a > 0x7F800000u ? splat_i(0x7E00) : h;
  return (vu)h | sign;
}
#else
#define FM_VEC 0
#endif
constexpr int64_t kLanes = 16;

// ---------------------------------------------------------------- dtype traits
// Each logits/gradient dtype: its code (the `dtype` argument), its storage type (bf16 and fp16
// arrive as uint16 bits) and its load / store as fp32, for one element and for 16 lanes.
struct F32 {
  static constexpr int kCode = kF32;
  using Storage = float;
  static FM_INLINE float load(float x) { return x; }
  static FM_INLINE float store(float x) { return x; }
#if FM_VEC
  static FM_INLINE vf load_vec(const float* p) { return load_vf(p); }
  static FM_INLINE void store_vec(float* p, vf v) { store_vf(p, v); }
#endif
};
struct BF16 {
  static constexpr int kCode = kBF16;
  using Storage = uint16_t;
  static FM_INLINE float load(uint16_t h) { return bf16_to_float(h); }
  static FM_INLINE uint16_t store(float x) { return float_to_bf16(x); }
#if FM_VEC
  static FM_INLINE vf load_vec(const uint16_t* p) { return bf16_to_float(load_vh(p)); }
  static FM_INLINE void store_vec(uint16_t* p, vf v) { store_vh(p, float_to_bf16(v)); }
#endif
};
struct F16 {
  static constexpr int kCode = kF16;
  using Storage = uint16_t;
  static FM_INLINE float load(uint16_t h) { return half_to_float(h); }
  static FM_INLINE uint16_t store(float x) { return float_to_half(x); }
#if FM_VEC
  static FM_INLINE vf load_vec(const uint16_t* p) { return half_to_float(load_vh(p)); }
  static FM_INLINE void store_vec(uint16_t* p, vf v) { store_vh(p, float_to_half(v)); }
#endif
};

// f(Traits{}) for the traits of a dtype code (one of kF32, kBF16, kF16).
template <typename F>
decltype(auto) with_dtype(int dtype, F&& f) {
  if (dtype == kBF16) return f(BF16{});
  if (dtype == kF16) return f(F16{});
  return f(F32{});
}

// Bytes per element of a dtype code.
inline size_t element_size(int dtype) { return dtype == kF32 ? sizeof(float) : sizeof(uint16_t); }

// ---------------------------------------------------------------- row passes
FM_INLINE float row_max_impl(const float* __restrict x, int64_t n) {
  float m = -INFINITY;
  int64_t i = 0;
#if FM_VEC
  if (n >= kLanes) {
    vf acc = splat(-INFINITY);
    for (; i + kLanes <= n; i += kLanes) {
      const vf v = load_vf(x + i);
      acc = v > acc ? v : acc;
    }
    for (int l = 0; l < kLanes; ++l) m = acc[l] > m ? acc[l] : m;
  }
#endif
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;  // skips NaN; a NaN still reaches the loss through the sums of the next pass
}
FM_CE_VARIANTS(, float, row_max, (const float* __restrict x, int64_t n), (x, n))

// e_j = exp(x_j - m) into e (null: not stored; may equal x); sums of e_j and x_j in double,
// from fp32 partial sums over blocks of kBlock elements.
template <bool kStore>
FM_INLINE void row_exp_body(const float* x, float* e, int64_t n, float m, double* sum_e, double* sum_x) {
  double total_e = 0.0, total_x = 0.0;
  int64_t i = 0;
#if FM_VEC
  while (i + kLanes <= n) {
    const int64_t stop = std::min<int64_t>(n, i + kBlock);
    vf acc_e = splat(0.0f), acc_x = splat(0.0f);
    for (; i + kLanes <= stop; i += kLanes) {
      const vf v = load_vf(x + i);
      const vf ev = fast_exp(v - m);
      if (kStore) store_vf(e + i, ev);
      acc_e += ev;
      acc_x += v;
    }
    float block_e = 0.0f, block_x = 0.0f;
    for (int l = 0; l < kLanes; ++l) {
      block_e += acc_e[l];
      block_x += acc_x[l];
    }
    total_e += block_e;
    total_x += block_x;
  }
#endif
  for (; i < n; ++i) {
    const float v = x[i];
    const float ev = fast_exp(v - m);
    if (kStore) e[i] = ev;
    total_e += ev;
    total_x += v;
  }
  *sum_e = total_e;
  *sum_x = total_x;
}

FM_INLINE void row_exp_store_impl(const float* __restrict x, float* __restrict e, int64_t n, float m, double* se,
                             double* sx) {
  row_exp_body<true>(x, e, n, m, se, sx);
}
FM_CE_VARIANTS(, void, row_exp_store, (const float* __restrict x, float* __restrict e, int64_t n, float m, double* se, double* sx), (x, e, n, m, se, sx))
FM_INLINE void row_exp_inplace_impl(float* x, int64_t n, float m, double* se, double* sx) {
  row_exp_body<true>(x, x, n, m, se, sx);
}
FM_CE_VARIANTS(, void, row_exp_inplace, (float* x, int64_t n, float m, double* se, double* sx), (x, n, m, se, sx))
FM_INLINE void row_exp_sum_impl(const float* __restrict x, int64_t n, float m, double* se, double* sx) {
  row_exp_body<false>(x, nullptr, n, m, se, sx);
}
FM_CE_VARIANTS(, void, row_exp_sum, (const float* __restrict x, int64_t n, float m, double* se, double* sx), (x, n, m, se, sx))

// Element-wise loops: `VEC` is the 16-lane body at offset i, `SCALAR` the same for one element.
#if FM_VEC
#define FM_ROW_LOOP(n, VEC, SCALAR)                    \
  do {                                                 \
    int64_t i = 0;                                     \
    for (; i + kLanes <= (n); i += kLanes) { VEC; }    \
    for (; i < (n); ++i) { SCALAR; }                   \
  } while (0)
#else
#define FM_ROW_LOOP(n, VEC, SCALAR)                    \
  do {                                                 \
    for (int64_t i = 0; i < (n); ++i) { SCALAR; }      \
  } while (0)
#endif

// Row loops per dtype D (F32, BF16, F16), chosen by the tag argument.
// g_j = a * e_j + b, stored as D (in place when D is F32 and out == e, so no __restrict).
template <typename D>
FM_INLINE void row_affine_impl(D, const float* e, typename D::Storage* out, int64_t n, float a, float b) {
  FM_ROW_LOOP(n, D::store_vec(out + i, load_vf(e + i) * a + b), out[i] = D::store(e[i] * a + b));
}
FM_CE_VARIANTS(template <typename D>, void, row_affine,
                (D d, const float* e, typename D::Storage* out, int64_t n, float a, float b), (d, e, out, n, a, b))

// fp32 <-> D, element-wise.
template <typename D>
FM_INLINE void row_widen_impl(D, const typename D::Storage* __restrict in, float* __restrict out, int64_t n) {
  FM_ROW_LOOP(n, store_vf(out + i, D::load_vec(in + i)), out[i] = D::load(in[i]));
}
FM_CE_VARIANTS(template <typename D>, void, row_widen,
                (D d, const typename D::Storage* __restrict in, float* __restrict out, int64_t n), (d, in, out, n))
template <typename D>
FM_INLINE void row_narrow_impl(D, const float* __restrict in, typename D::Storage* __restrict out, int64_t n) {
  FM_ROW_LOOP(n, D::store_vec(out + i, load_vf(in + i)), out[i] = D::store(in[i]));
}
FM_CE_VARIANTS(template <typename D>, void, row_narrow,
                (D d, const float* __restrict in, typename D::Storage* __restrict out, int64_t n), (d, in, out, n))

// out = a * in, in D; may run in place (in == out), so no __restrict: each lane reads before it writes.
template <typename D>
FM_INLINE void row_scale_impl(D, const typename D::Storage* in, typename D::Storage* out, int64_t n, float a) {
  FM_ROW_LOOP(n, D::store_vec(out + i, D::load_vec(in + i) * a), out[i] = D::store(D::load(in[i]) * a));
}
FM_CE_VARIANTS(template <typename D>, void, row_scale,
                (D d, const typename D::Storage* in, typename D::Storage* out, int64_t n, float a), (d, in, out, n, a))

FM_INLINE void exp_array_impl(const float* __restrict x, float* __restrict out, int64_t n) {
  FM_ROW_LOOP(n, store_vf(out + i, fast_exp(load_vf(x + i))), out[i] = fast_exp(x[i]));
}
FM_CE_VARIANTS(, void, exp_array, (const float* __restrict x, float* __restrict out, int64_t n), (x, out, n))

// ---------------------------------------------------------------- the forward kernel
struct ForwardArgs {
  const char* logits = nullptr;  // [N, V] rows of elem_size bytes each element
  int64_t logits_row_stride = 0;  // in elements
  char* grad = nullptr;          // null: no gradient
  int64_t grad_row_stride = 0;
  bool grad_at_row = false;      // gradient row = rows[i] (in place) instead of i (compact)
  int dtype = kF32;
  int64_t V = 0, M = 0;
  const int64_t* rows = nullptr;  // [M] or null (identity)
  const int64_t* targets = nullptr;  // [M]
  float* loss = nullptr;          // [M]
  float* lse = nullptr;           // [M] or null
  float* ce = nullptr;            // [M] or null: plain cross-entropy lse - x_y (no smoothing / z-loss)
  uint8_t* correct = nullptr;     // [M] or null: 1 where x_y equals the row max
  const float* row_scale = nullptr;  // [M] or null: per-row factor on grad_scale
  double grad_scale = 1.0, label_smoothing = 0.0, z_loss = 0.0;
};

template <typename D>
void forward_rows(const ForwardArgs& p, int64_t begin, int64_t end) {
  using S = typename D::Storage;
  constexpr bool kFp32Row = D::kCode == kF32;  // the row is fp32 already: no scratch copy
  const int64_t V = p.V;
  std::vector<float> scratch(kFp32Row ? 0 : V);
  const double eps = p.label_smoothing;
  for (int64_t i = begin; i < end; ++i) {
    const int64_t row = p.rows ? p.rows[i] : i;
    const int64_t y = p.targets[i];
    const S* xrow = reinterpret_cast<const S*>(p.logits) + static_cast<size_t>(row) * static_cast<size_t>(p.logits_row_stride);
    S* grow = nullptr;
    if (p.grad) {
      const int64_t g = p.grad_at_row ? row : i;
      grow = reinterpret_cast<S*>(p.grad) + static_cast<size_t>(g) * static_cast<size_t>(p.grad_row_stride);
    }
    const float x_y = D::load(xrow[y]);
    // Pass 1 + 2 over an fp32 view of the row; `work` receives e_j when a gradient is wanted.
    const float* x;
    float* work = nullptr;
    if constexpr (kFp32Row) {
      x = xrow;
      if (grow) work = grow;
    } else {
      row_widen(D{}, xrow, scratch.data(), V);
      x = scratch.data();
      if (grow) work = scratch.data();
    }
    const float m = row_max(x, V);
    double s, sx;
    if (!work)
      row_exp_sum(x, V, m, &s, &sx);
    else if (work == x)
      row_exp_inplace(work, V, m, &s, &sx);
    else
      row_exp_store(x, work, V, m, &s, &sx);
    const double lse = static_cast<double>(m) + std::log(s);
    double loss = lse - (1.0 - eps) * x_y + p.z_loss * lse * lse;
    if (eps != 0.0) loss -= eps / static_cast<double>(V) * sx;  // sx may be -inf (masked classes)
    p.loss[i] = static_cast<float>(loss);
    if (p.lse) p.lse[i] = static_cast<float>(lse);
    if (p.ce) p.ce[i] = static_cast<float>(lse - x_y);
    if (p.correct) p.correct[i] = x_y == m ? 1 : 0;
    if (!grow) continue;
    // Pass 3: g = a e + b, then the target's -scale (1 - eps).
    const double scale = p.row_scale ? p.grad_scale * p.row_scale[i] : p.grad_scale;
    const double a = scale * (1.0 + 2.0 * p.z_loss * lse) / s;
    const double b = -scale * eps / static_cast<double>(V);
    const double e_y = std::exp(static_cast<double>(x_y) - m);
    const float g_y = static_cast<float>(a * e_y + b - scale * (1.0 - eps));
    row_affine(D{}, work, grow, V, static_cast<float>(a), static_cast<float>(b));
    grow[y] = D::store(g_y);
  }
}

// dst = factor * src for one row of V elements (same dtype; src may equal dst).
inline void scale_row(const char* src, char* dst, int dtype, int64_t V, float factor) {
  with_dtype(dtype, [&](auto d) {
    using S = typename decltype(d)::Storage;
    row_scale(d, reinterpret_cast<const S*>(src), reinterpret_cast<S*>(dst), V, factor);
  });
}

// ---------------------------------------------------------------- binding helpers
// The dtype code of a logits / gradient buffer: fp32, or 16-bit integer bits of bf16/fp16
// (which of the two the array cannot say: the `dtype` argument does).
int resolve_dtype(const char* op, const py::array& a, int dtype, const char* name) {
  const bool f32 = has_dtype<float>(a);
  if (!f32 && !(a.itemsize() == 2 && (a.dtype().kind() == 'i' || a.dtype().kind() == 'u')))
    fail_value(op, std::string(name) + " must be float32 or a 16-bit bits view of bf16/fp16, got " + dtype_string(a));
  if (dtype < kF32 || dtype > kF16) fail_value(op, "dtype must be 0 (fp32), 1 (bf16) or 2 (fp16), got " + std::to_string(dtype));
  if (f32 != (dtype == kF32))
    fail_value(op, std::string(name) + "'s dtype " + dtype_string(a) + " does not match dtype code " + std::to_string(dtype));
  return dtype;
}

// A required 1-D T array of n elements (its length is read first when n < 0).
template <typename T>
T* vector_ptr(const char* op, const py::handle& obj, const char* name, int64_t n, bool writable) {
  return typed_array<T>(op, obj, name, {n}, writable);
}

// The length of a 1-D array argument (its dtype and layout are checked by vector_ptr).
int64_t vector_length(const char* op, const py::handle& obj, const char* name) {
  const py::array a = as_array(op, obj, name);
  if (a.ndim() != 1) fail_value(op, std::string(name) + " must have shape (n,), got " + shape_string(a));
  return a.shape(0);
}

// Every rows[i] in [0, n).
void check_indices(const char* op, const int64_t* rows, int64_t m, int64_t n) {
  for (int64_t i = 0; i < m; ++i)
    if (rows[i] < 0 || rows[i] >= n)
      fail_value(op, "rows[" + std::to_string(i) + "] = " + std::to_string(rows[i]) + " is outside [0, " +
                         std::to_string(n) + ")");
}

// Rows per parallel_for chunk: enough work per chunk (about 64k elements) to beat the wake-up.
int64_t row_grain(int64_t V) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(V, 1)); }

// ---------------------------------------------------------------- bindings
void ce_forward(const py::array& logits, int dtype, const py::object& rows_obj, const py::object& targets_obj,
                const py::object& loss_obj, const py::object& lse_obj, const py::object& grad_obj, bool grad_at_row,
                double grad_scale, const py::object& row_scale_obj, double label_smoothing, double z_loss,
                const py::object& ce_obj, const py::object& correct_obj) {
  constexpr const char* op = "ce_forward";
  ForwardArgs p;
  p.dtype = resolve_dtype(op, logits, dtype, "logits");
  p.V = logits.ndim() == 2 ? logits.shape(1) : -1;
  p.logits_row_stride = check_rows(op, logits, "logits", p.V, false);
  p.logits = static_cast<const char*>(logits.data());
  const int64_t n_rows = logits.shape(0);
  p.M = vector_length(op, targets_obj, "targets");
  p.targets = vector_ptr<int64_t>(op, targets_obj, "targets", p.M, false);
  p.loss = vector_ptr<float>(op, loss_obj, "loss", p.M, true);
  if (!lse_obj.is_none()) p.lse = vector_ptr<float>(op, lse_obj, "lse", p.M, true);
  if (!ce_obj.is_none()) p.ce = vector_ptr<float>(op, ce_obj, "ce", p.M, true);
  if (!correct_obj.is_none()) p.correct = vector_ptr<uint8_t>(op, correct_obj, "correct", p.M, true);
  if (!row_scale_obj.is_none()) p.row_scale = vector_ptr<float>(op, row_scale_obj, "row_scale", p.M, false);
  if (!rows_obj.is_none()) {
    p.rows = vector_ptr<int64_t>(op, rows_obj, "rows", p.M, false);
  } else if (p.M > n_rows) {
    fail_value(op, "targets has " + std::to_string(p.M) + " entries, more than logits has rows (" +
                       std::to_string(n_rows) + ")");
  }
  p.grad_at_row = grad_at_row;
  if (!grad_obj.is_none()) {
    py::array grad = as_array(op, grad_obj, "grad");
    resolve_dtype(op, grad, dtype, "grad");
    p.grad_row_stride = check_rows(op, grad, "grad", p.V, true);
    const int64_t needed = grad_at_row ? n_rows : p.M;
    if (grad.shape(0) < needed)
      fail_value(op, "grad must have at least " + std::to_string(needed) + " rows, got " + shape_string(grad));
    p.grad = static_cast<char*>(grad.mutable_data());
  }
  p.grad_scale = grad_scale;
  p.label_smoothing = label_smoothing;
  p.z_loss = z_loss;
  py::gil_scoped_release release;
  with_dtype(p.dtype, [&](auto d) {
    parallel_for(p.M, row_grain(p.V), [&](int64_t b, int64_t e) { forward_rows<decltype(d)>(p, b, e); });
  });
}

// out[r] = scale(r) * grad_rows[pos(r)] for r in rows, 0 elsewhere; scale from grad_output
// (one value, or one per row of out when per_row).
void ce_expand_grad(const py::array& grad_rows, int dtype, const py::object& rows_obj, py::array out,
                    const py::object& grad_output_obj, bool per_row) {
  constexpr const char* op = "ce_expand_grad";
  resolve_dtype(op, grad_rows, dtype, "grad_rows");
  resolve_dtype(op, out, dtype, "out");
  const int64_t V = out.ndim() == 2 ? out.shape(1) : -1;
  const int64_t src_stride = check_rows(op, grad_rows, "grad_rows", V, false);
  const int64_t dst_stride = check_rows(op, out, "out", V, true);
  const int64_t M = grad_rows.shape(0), N = out.shape(0);
  const int64_t* rows = vector_ptr<int64_t>(op, rows_obj, "rows", M, false);
  const float* go = vector_ptr<float>(op, grad_output_obj, "grad_output", per_row ? N : 1, false);
  check_indices(op, rows, M, N);
  std::vector<int64_t> pos(N, -1);
  for (int64_t i = 0; i < M; ++i) pos[rows[i]] = i;
  const size_t elem = element_size(dtype);
  const char* src = static_cast<const char*>(grad_rows.data());
  char* dst = static_cast<char*>(out.mutable_data());
  py::gil_scoped_release release;
  parallel_for(N, row_grain(V), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      char* d = dst + static_cast<size_t>(r) * dst_stride * elem;
      const int64_t i = pos[r];
      if (i < 0) {
        std::memset(d, 0, static_cast<size_t>(V) * elem);
        continue;
      }
      const char* s = src + static_cast<size_t>(i) * src_stride * elem;
      const float factor = go[per_row ? r : 0];
      if (factor == 1.0f)
        std::memcpy(d, s, static_cast<size_t>(V) * elem);
      else
        scale_row(s, d, dtype, V, factor);
    }
  });
}

// In place: buf[rows[i]] *= grad_output (one value, or grad_output[rows[i]] when per_row).
void ce_scale_rows(py::array buf, int dtype, const py::object& rows_obj, const py::object& grad_output_obj,
                   bool per_row) {
  constexpr const char* op = "ce_scale_rows";
  resolve_dtype(op, buf, dtype, "buf");
  const int64_t V = buf.ndim() == 2 ? buf.shape(1) : -1;
  const int64_t stride = check_rows(op, buf, "buf", V, true);
  const int64_t N = buf.shape(0);
  const int64_t M = vector_length(op, rows_obj, "rows");
  const int64_t* rows = vector_ptr<int64_t>(op, rows_obj, "rows", M, false);
  const float* go = vector_ptr<float>(op, grad_output_obj, "grad_output", per_row ? N : 1, false);
  check_indices(op, rows, M, N);
  const size_t elem = element_size(dtype);
  char* base = static_cast<char*>(buf.mutable_data());
  py::gil_scoped_release release;
  parallel_for(M, row_grain(V), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float factor = go[per_row ? rows[i] : 0];
      if (factor == 1.0f) continue;
      char* d = base + static_cast<size_t>(rows[i]) * stride * elem;
      scale_row(d, d, dtype, V, factor);
    }
  });
}

// buf[rows[i]] = 0.
void ce_zero_rows(py::array buf, const py::object& rows_obj) {
  constexpr const char* op = "ce_zero_rows";
  if (buf.ndim() != 2) fail_value(op, "buf must be a 2-D array, got shape " + shape_string(buf));
  const int64_t V = buf.shape(1);
  const int64_t stride = check_rows(op, buf, "buf", V, true);
  const int64_t N = buf.shape(0);
  const int64_t M = vector_length(op, rows_obj, "rows");
  const int64_t* rows = vector_ptr<int64_t>(op, rows_obj, "rows", M, false);
  check_indices(op, rows, M, N);
  const size_t elem = buf.itemsize();
  char* base = static_cast<char*>(buf.mutable_data());
  py::gil_scoped_release release;
  parallel_for(M, row_grain(V), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) std::memset(base + static_cast<size_t>(rows[i]) * stride * elem, 0, V * elem);
  });
}

// Test hooks: the kernel's exp and its fp32 <-> bf16/fp16 conversions, element-wise.
void ce_exp(const py::array_t<float>& x, py::array_t<float> out) {
  const int64_t n = x.size();
  if (out.size() != n) fail_value("ce_exp", "out must have x's size " + std::to_string(n) + ", got " + std::to_string(out.size()));
  exp_array(x.data(), out.mutable_data(), n);
}

void ce_convert(const py::array& src, int src_dtype, py::array dst, int dst_dtype) {
  constexpr const char* op = "ce_convert";
  const int64_t n = src.size();
  if (dst.size() != n) fail_value(op, "dst must have src's size " + std::to_string(n) + ", got " + std::to_string(dst.size()));
  resolve_dtype(op, src, src_dtype, "src");
  resolve_dtype(op, dst, dst_dtype, "dst");
  if (!(src.flags() & py::array::c_style) || !(dst.flags() & py::array::c_style))
    fail_value(op, "src and dst must be C-contiguous");
  if ((src_dtype == kF32) == (dst_dtype == kF32)) fail_value(op, "converts between fp32 and bf16/fp16 only");
  const int narrow = dst_dtype == kF32 ? src_dtype : dst_dtype;  // the 16-bit side
  with_dtype(narrow, [&](auto d) {
    if constexpr (decltype(d)::kCode != kF32) {
      if (src_dtype == kF32)
        row_narrow(d, static_cast<const float*>(src.data()), static_cast<uint16_t*>(dst.mutable_data()), n);
      else
        row_widen(d, static_cast<const uint16_t*>(src.data()), static_cast<float*>(dst.mutable_data()), n);
    }
  });
}

}  // namespace

void register_cross_entropy(py::module_& m) {
  m.def("ce_forward", &ce_forward, py::arg("logits"), py::arg("dtype"), py::arg("rows"), py::arg("targets"),
        py::arg("loss"), py::arg("lse"), py::arg("grad"), py::arg("grad_at_row"), py::arg("grad_scale"),
        py::arg("row_scale"), py::arg("label_smoothing"), py::arg("z_loss"), py::arg("ce") = py::none(),
        py::arg("correct") = py::none(),
        "Cross-entropy of the rows `rows` (None: 0..M-1) of [N, V] logits (fp32, or bf16/fp16 bits as int16)\n"
        "against `targets`: per-row loss (and lse) into fp32 buffers, and optionally the gradient of the\n"
        "logits times grad_scale (times row_scale[i] if given) into `grad` (row i, or row rows[i] when\n"
        "grad_at_row; `grad` may be `logits`). Optional feedback outputs: `ce` (fp32 [M], the plain\n"
        "cross-entropy lse - x_y, without smoothing or z-loss) and `correct` (uint8 [M], 1 where x_y equals\n"
        "the row max), written in the same pass.");
  m.def("ce_expand_grad", &ce_expand_grad, py::arg("grad_rows"), py::arg("dtype"), py::arg("rows"),
        py::arg("out"), py::arg("grad_output"), py::arg("per_row"),
        "out[rows[i]] = grad_output * grad_rows[i]; every other row of out = 0.");
  m.def("ce_scale_rows", &ce_scale_rows, py::arg("buf"), py::arg("dtype"), py::arg("rows"), py::arg("grad_output"),
        py::arg("per_row"), "buf[rows[i]] *= grad_output (in place).");
  m.def("ce_zero_rows", &ce_zero_rows, py::arg("buf"), py::arg("rows"), "buf[rows[i]] = 0 (in place).");
  m.def(
      "_ce_isa",
      [](const py::object& isa) -> std::string {
        if (!isa.is_none()) {
          const std::string name = isa.cast<std::string>();
          Isa level;
          if (!parse_isa(name, &level)) fail_value("_ce_isa", "isa must be 'default', 'avx2' or 'avx512', got '" + name + "'");
          set_isa_limit(IsaFamily::kCrossEntropy, level);
        }
        return isa_name(active_isa(IsaFamily::kCrossEntropy));
      },
      py::arg("isa") = py::none(),
      "The instruction set the cross-entropy loops use ('avx512', 'avx2' or 'default'); pass one to cap it "
      "(for tests). The levels may differ in the last bit: avx2/avx512 contract a * b + c into FMA.");
  m.def("ce_exp", &ce_exp, py::arg("x"), py::arg("out"), "The kernel's exp, element-wise (test hook).");
  m.def("ce_convert", &ce_convert, py::arg("src"), py::arg("src_dtype"), py::arg("dst"), py::arg("dst_dtype"),
        "The kernel's fp32/bf16/fp16 conversions, element-wise (test hook).");
}

}  // namespace fastmask
