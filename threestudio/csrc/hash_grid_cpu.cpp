// Multiresolution hash encoding on the CPU: forward, backward and double backward.
//
// Written for this project (no maintained CPU library implements tiny-cuda-nn's grid encoding).
// Semantics follow tiny-cuda-nn's GridEncoding with linear interpolation, so the parameter
// table is interchangeable with tcnn's (see threestudio/models/encodings/hash_grid_layout.py for
// the layout). The file deliberately includes no torch headers: it is called through ctypes with raw
// pointers, which keeps the one-time build to a few seconds instead of a minute.
//
// Parallelism: work is split by level. A level's slice of the parameter table (and of the
// parameter gradient) is touched by one thread only, so the scatter-adds need no atomics; levels
// are also the natural unit for cache locality (one level's table is at most 2^T * F floats).
// Gradients with respect to positions are summed over levels, so each thread accumulates them in
// its own scratch buffer and the buffers are reduced at the end.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <omp.h>
#include <sys/mman.h>

namespace {

constexpr uint32_t kPrimeY = 2654435761u;
constexpr uint32_t kPrimeZ = 805459861u;

struct Level {
  float scale;          // positions are mapped to scale * x + 0.5
  uint32_t resolution;  // vertices per axis of the dense grid
  uint32_t size;        // entries of this level's table
  uint32_t offset;      // first entry of this level in the table
  bool hashed;          // index by hashing (then size is a power of two) instead of dense strides
};

struct Grid {
  int n_levels;
  int n_features;
  Level levels[64];
};

Grid make_grid(int n_levels, int n_features, const float* scales, const uint32_t* resolutions,
               const uint32_t* offsets, const uint8_t* hashed) {
  Grid grid;
  grid.n_levels = n_levels;
  grid.n_features = n_features;
  for (int l = 0; l < n_levels; ++l) {
    Level& lv = grid.levels[l];
    lv.scale = scales[l];
    lv.resolution = resolutions[l];
    lv.offset = offsets[l];
    lv.size = offsets[l + 1] - offsets[l];
    lv.hashed = hashed[l] != 0;
  }
  return grid;
}

int clamp_threads(int n_threads) { return n_threads < 1 ? 1 : n_threads; }

// Ask for transparent huge pages on a freshly allocated output buffer before it is first written.
// The parameter-gradient table is tens of MB and newly allocated on every backward; faulting it
// in 2 MB pages instead of 4 KB ones removes most of the first-touch cost. Harmless if the pages
// already exist or THP is disabled.
void advise_huge_pages(void* ptr, size_t bytes) {
  constexpr uintptr_t kHuge = 2u << 20;
  if (ptr == nullptr || bytes < 2 * kHuge) return;
  const uintptr_t begin = ((uintptr_t)ptr + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = ((uintptr_t)ptr + bytes) & ~(kHuge - 1);
  if (end > begin) madvise((void*)begin, end - begin, MADV_HUGEPAGE);
}

// Points are processed in small batches: the corner indices of a whole batch are computed and
// prefetched first, then gathered. Random table reads are the bottleneck, and this keeps many of
// them in flight at once (plain loops leave the core waiting on one cache miss after another).
constexpr int kBatch = 32;

struct Batch {
  uint32_t index[kBatch][8];
  float frac[kBatch][3];
};

// Corner indices of the cell containing each point of a batch, specialised per level kind so the
// inner loop has no branches. kHashed: tcnn's coherent prime hash (size is a power of two);
// otherwise dense strides with wrap-around modulo.
template <bool kHashed, bool kForWrite>
inline void locate_batch(const Level& lv, const float* __restrict x, int count, Batch& b,
                         const float* table, int F) {
  const uint32_t res = lv.resolution, res2 = lv.resolution * lv.resolution;
  const uint32_t mask = lv.size - 1;
  for (int j = 0; j < count; ++j) {
    uint32_t g[3];
    for (int d = 0; d < 3; ++d) {
      // no fused multiply-add: the pure-PyTorch reference computes the same two roundings
      const float pos = x[3 * j + d] * lv.scale + 0.5f;
      // floor without a libm call (exact for |pos| < 2^31; positions are O(resolution))
      int32_t cell = (int32_t)pos;
      cell -= (pos < (float)cell) ? 1 : 0;
      g[d] = (uint32_t)cell;
      b.frac[j][d] = pos - (float)cell;
    }
    uint32_t cx[2], cy[2], cz[2];
    if (kHashed) {
      cx[0] = g[0]; cx[1] = g[0] + 1u;
      cy[0] = g[1] * kPrimeY; cy[1] = cy[0] + kPrimeY;
      cz[0] = g[2] * kPrimeZ; cz[1] = cz[0] + kPrimeZ;
    } else {
      cx[0] = g[0]; cx[1] = g[0] + 1u;
      cy[0] = g[1] * res; cy[1] = cy[0] + res;
      cz[0] = g[2] * res2; cz[1] = cz[0] + res2;
    }
    for (int k = 0; k < 8; ++k) {
      uint32_t e;
      if (kHashed) {
        e = (cx[k & 1] ^ cy[(k >> 1) & 1] ^ cz[k >> 2]) & mask;
      } else {
        e = cx[k & 1] + cy[(k >> 1) & 1] + cz[k >> 2];
        if (e >= lv.size) e %= lv.size;  // only cells on the upper boundary wrap around
      }
      b.index[j][k] = e;
      __builtin_prefetch(table + (int64_t)e * F, kForWrite ? 1 : 0, 1);
    }
  }
}

inline void prefetch_batch(const Batch& b, int count, const float* table, int F) {
  for (int j = 0; j < count; ++j)
    for (int k = 0; k < 8; ++k) __builtin_prefetch(table + (int64_t)b.index[j][k] * F, 0, 1);
}

template <bool kForWrite>
inline void locate_batch_any(const Level& lv, const float* x, int count, Batch& b, const float* table,
                             int F) {
  if (lv.hashed) {
    locate_batch<true, kForWrite>(lv, x, count, b, table, F);
  } else {
    locate_batch<false, kForWrite>(lv, x, count, b, table, F);
  }
}

// Trilinear weights (and their derivatives times scale) of the 8 corners from the fractions.
template <bool kWithDerivative>
inline void corner_weights(const float* f, float scale, float w[8], float dw[8][3]) {
  const float ax[2] = {1.0f - f[0], f[0]}, ay[2] = {1.0f - f[1], f[1]}, az[2] = {1.0f - f[2], f[2]};
  for (int k = 0; k < 8; ++k) {
    const int bx = k & 1, by = (k >> 1) & 1, bz = k >> 2;
    w[k] = ax[bx] * ay[by] * az[bz];
    if (kWithDerivative) {
      dw[k][0] = (bx ? scale : -scale) * ay[by] * az[bz];
      dw[k][1] = ax[bx] * (by ? scale : -scale) * az[bz];
      dw[k][2] = ax[bx] * ay[by] * (bz ? scale : -scale);
    }
  }
}

template <int F>
void forward_impl(const Grid& grid, const float* x, int64_t n, const float* params, float* out,
                  int n_threads) {
  const int L = grid.n_levels;
  const int out_stride = L * F;
  advise_huge_pages(out, sizeof(float) * (size_t)n * out_stride);
  constexpr int64_t kBlock = 4096;
  const int64_t n_blocks = (n + kBlock - 1) / kBlock;
  const int64_t n_tasks = n_blocks * L;
#pragma omp parallel for schedule(dynamic, 1) num_threads(n_threads)
  for (int64_t task = 0; task < n_tasks; ++task) {
    // level-major task order: consecutive tasks reuse the same level's table in cache
    const int l = (int)(task / n_blocks);
    const int64_t begin = (task % n_blocks) * kBlock;
    const int64_t end = begin + kBlock < n ? begin + kBlock : n;
    const Level& lv = grid.levels[l];
    const float* table = params + (int64_t)lv.offset * F;
    Batch b;
    float w[8], dw[8][3];
    for (int64_t i0 = begin; i0 < end; i0 += kBatch) {
      const int count = (int)(end - i0 < kBatch ? end - i0 : kBatch);
      locate_batch_any<false>(lv, x + 3 * i0, count, b, table, F);
      for (int j = 0; j < count; ++j) {
        corner_weights<false>(b.frac[j], lv.scale, w, dw);
        float acc[F];
        for (int f = 0; f < F; ++f) acc[f] = 0.0f;
        for (int k = 0; k < 8; ++k) {
          const float* v = table + (int64_t)b.index[j][k] * F;
          for (int f = 0; f < F; ++f) acc[f] += w[k] * v[f];
        }
        float* o = out + (i0 + j) * out_stride + l * F;
        for (int f = 0; f < F; ++f) o[f] = acc[f];
      }
    }
  }
}

// grad_params (cleared here) and/or grad_x; scratch holds n_threads * n * 3 floats.
template <int F>
void backward_impl(const Grid& grid, const float* x, int64_t n, const float* params,
                   const float* grad_out, float* grad_params, float* grad_x, float* scratch,
                   int n_threads) {
  const int L = grid.n_levels;
  const int out_stride = L * F;
  const bool want_x = grad_x != nullptr;
  if (want_x) std::memset(scratch, 0, sizeof(float) * (size_t)n_threads * (size_t)n * 3);
  if (grad_params) {
    const Level& last = grid.levels[L - 1];
    advise_huge_pages(grad_params, sizeof(float) * ((size_t)last.offset + last.size) * F);
  }
// static round-robin (level l on thread l % n_threads): which levels share a thread's position-gradient
// partial sums must not depend on timing, or grad_x (and a resumed run) would differ run to run
#pragma omp parallel for schedule(static, 1) num_threads(n_threads)
  for (int l = 0; l < L; ++l) {
    const Level& lv = grid.levels[l];
    const float* table = params + (int64_t)lv.offset * F;
    float* gtable = grad_params ? grad_params + (int64_t)lv.offset * F : nullptr;
    // the thread that owns a level clears its slice: parallel, and leaves it in cache
    if (gtable) std::memset(gtable, 0, sizeof(float) * (size_t)lv.size * F);
    float* gx_local = want_x ? scratch + (int64_t)omp_get_thread_num() * n * 3 : nullptr;
    Batch b;
    float w[8], dw[8][3];
    for (int64_t i0 = 0; i0 < n; i0 += kBatch) {
      const int count = (int)(n - i0 < kBatch ? n - i0 : kBatch);
      if (gtable) {
        locate_batch_any<true>(lv, x + 3 * i0, count, b, gtable, F);
      } else {
        locate_batch_any<false>(lv, x + 3 * i0, count, b, table, F);
      }
      if (want_x && gtable) prefetch_batch(b, count, table, F);
      for (int j = 0; j < count; ++j) {
        const int64_t i = i0 + j;
        const float* go = grad_out + i * out_stride + l * F;
        if (want_x) {
          corner_weights<true>(b.frac[j], lv.scale, w, dw);
        } else {
          corner_weights<false>(b.frac[j], lv.scale, w, dw);
        }
        float gsum[3] = {0.0f, 0.0f, 0.0f};
        for (int k = 0; k < 8; ++k) {
          const int64_t e = (int64_t)b.index[j][k] * F;
          if (gtable) {
            for (int f = 0; f < F; ++f) gtable[e + f] += w[k] * go[f];
          }
          if (want_x) {
            float g = 0.0f;
            for (int f = 0; f < F; ++f) g += go[f] * table[e + f];
            gsum[0] += g * dw[k][0];
            gsum[1] += g * dw[k][1];
            gsum[2] += g * dw[k][2];
          }
        }
        if (want_x) {
          gx_local[3 * i + 0] += gsum[0];
          gx_local[3 * i + 1] += gsum[1];
          gx_local[3 * i + 2] += gsum[2];
        }
      }
    }
  }
  if (want_x) {
    const int64_t m = n * 3;
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t j = 0; j < m; ++j) {
      float s = 0.0f;
      for (int t = 0; t < n_threads; ++t) s += scratch[(int64_t)t * m + j];
      grad_x[j] = s;
    }
  }
}

// Derivatives of grad_x = sum_k (grad_out . p_k) dw_k/dx with respect to grad_out, params and x,
// contracted with gg_x (the incoming gradient of grad_x). Any output may be null.
//   gg_grad_out[i, l*F+f] = sum_k (dw_k/dx . gg_x) p_k[f]
//   gg_params[k, f]      += (dw_k/dx . gg_x) grad_out[i, l*F+f]          (cleared here)
//   gg_x_out[i, e]        = sum_k (grad_out . p_k) sum_{d != e} gg_x[d] d2w_k/dx_d dx_e
template <int F>
void backward_backward_impl(const Grid& grid, const float* x, int64_t n, const float* params,
                            const float* grad_out, const float* gg_x, float* gg_grad_out,
                            float* gg_params, float* gg_x_out, float* scratch, int n_threads) {
  const int L = grid.n_levels;
  const int out_stride = L * F;
  const bool want_x = gg_x_out != nullptr;
  if (want_x) std::memset(scratch, 0, sizeof(float) * (size_t)n_threads * (size_t)n * 3);
  if (gg_params) {
    const Level& last = grid.levels[L - 1];
    advise_huge_pages(gg_params, sizeof(float) * ((size_t)last.offset + last.size) * F);
  }
#pragma omp parallel for schedule(static, 1) num_threads(n_threads)  // deterministic, as above
  for (int l = 0; l < L; ++l) {
    const Level& lv = grid.levels[l];
    const float* table = params + (int64_t)lv.offset * F;
    float* gtable = gg_params ? gg_params + (int64_t)lv.offset * F : nullptr;
    if (gtable) std::memset(gtable, 0, sizeof(float) * (size_t)lv.size * F);
    const float s2 = lv.scale * lv.scale;
    float* gx_local = want_x ? scratch + (int64_t)omp_get_thread_num() * n * 3 : nullptr;
    Batch b;
    float w[8], dw[8][3];
    for (int64_t i0 = 0; i0 < n; i0 += kBatch) {
      const int count = (int)(n - i0 < kBatch ? n - i0 : kBatch);
      locate_batch_any<false>(lv, x + 3 * i0, count, b, table, F);
      if (gtable) prefetch_batch(b, count, gtable, F);
      for (int j = 0; j < count; ++j) {
        const int64_t i = i0 + j;
        const float* go = grad_out + i * out_stride + l * F;
        const float* ggx = gg_x + 3 * i;
        const float* fr = b.frac[j];
        corner_weights<true>(fr, lv.scale, w, dw);
        float acc[F];
        for (int f = 0; f < F; ++f) acc[f] = 0.0f;
        float hx[3] = {0.0f, 0.0f, 0.0f};
        for (int k = 0; k < 8; ++k) {
          const int64_t e = (int64_t)b.index[j][k] * F;
          const float v = dw[k][0] * ggx[0] + dw[k][1] * ggx[1] + dw[k][2] * ggx[2];
          if (gg_grad_out) {
            for (int f = 0; f < F; ++f) acc[f] += v * table[e + f];
          }
          if (gtable) {
            for (int f = 0; f < F; ++f) gtable[e + f] += v * go[f];
          }
          if (want_x) {
            float g = 0.0f;
            for (int f = 0; f < F; ++f) g += go[f] * table[e + f];
            const int bx = k & 1, by = (k >> 1) & 1, bz = k >> 2;
            const float sx = bx ? 1.0f : -1.0f, sy = by ? 1.0f : -1.0f, sz = bz ? 1.0f : -1.0f;
            const float wx = bx ? fr[0] : 1.0f - fr[0];
            const float wy = by ? fr[1] : 1.0f - fr[1];
            const float wz = bz ? fr[2] : 1.0f - fr[2];
            // mixed second derivatives of the trilinear weight; the pure ones vanish
            const float hxy = s2 * sx * sy * wz, hxz = s2 * sx * sz * wy, hyz = s2 * sy * sz * wx;
            hx[0] += g * (hxy * ggx[1] + hxz * ggx[2]);
            hx[1] += g * (hxy * ggx[0] + hyz * ggx[2]);
            hx[2] += g * (hxz * ggx[0] + hyz * ggx[1]);
          }
        }
        if (gg_grad_out) {
          float* o = gg_grad_out + i * out_stride + l * F;
          for (int f = 0; f < F; ++f) o[f] = acc[f];
        }
        if (want_x) {
          gx_local[3 * i + 0] += hx[0];
          gx_local[3 * i + 1] += hx[1];
          gx_local[3 * i + 2] += hx[2];
        }
      }
    }
  }
  if (want_x) {
    const int64_t m = n * 3;
#pragma omp parallel for schedule(static) num_threads(n_threads)
    for (int64_t j = 0; j < m; ++j) {
      float s = 0.0f;
      for (int t = 0; t < n_threads; ++t) s += scratch[(int64_t)t * m + j];
      gg_x_out[j] = s;
    }
  }
}

}  // namespace

#define DISPATCH_FEATURES(F_VALUE, CALL)                         \
  switch (F_VALUE) {                                             \
    case 1: { constexpr int F = 1; CALL; return 0; }             \
    case 2: { constexpr int F = 2; CALL; return 0; }             \
    case 4: { constexpr int F = 4; CALL; return 0; }             \
    case 8: { constexpr int F = 8; CALL; return 0; }             \
    default: return 1;                                           \
  }

extern "C" {

int hg_abi_version() { return 1; }

// Returns 0 on success, 1 for an unsupported number of features per level.
int hg_forward(const float* x, int64_t n, const float* params, int n_levels, int n_features,
               const float* scales, const uint32_t* resolutions, const uint32_t* offsets,
               const uint8_t* hashed, float* out, int n_threads) {
  const Grid grid = make_grid(n_levels, n_features, scales, resolutions, offsets, hashed);
  DISPATCH_FEATURES(n_features, forward_impl<F>(grid, x, n, params, out, clamp_threads(n_threads)));
}

int hg_backward(const float* x, int64_t n, const float* params, int n_levels, int n_features,
                const float* scales, const uint32_t* resolutions, const uint32_t* offsets,
                const uint8_t* hashed, const float* grad_out, float* grad_params, float* grad_x,
                float* scratch, int n_threads) {
  const Grid grid = make_grid(n_levels, n_features, scales, resolutions, offsets, hashed);
  DISPATCH_FEATURES(n_features, backward_impl<F>(grid, x, n, params, grad_out, grad_params, grad_x,
                                                 scratch, clamp_threads(n_threads)));
}

int hg_backward_backward(const float* x, int64_t n, const float* params, int n_levels,
                         int n_features, const float* scales, const uint32_t* resolutions,
                         const uint32_t* offsets, const uint8_t* hashed, const float* grad_out,
                         const float* gg_x, float* gg_grad_out, float* gg_params, float* gg_x_out,
                         float* scratch, int n_threads) {
  const Grid grid = make_grid(n_levels, n_features, scales, resolutions, offsets, hashed);
  DISPATCH_FEATURES(n_features,
                    backward_backward_impl<F>(grid, x, n, params, grad_out, gg_x, gg_grad_out,
                                              gg_params, gg_x_out, scratch, clamp_threads(n_threads)));
}

}  // extern "C"
