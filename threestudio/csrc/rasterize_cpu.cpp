// Triangle rasterisation and analytic antialiasing on the CPU, with nvdiffrast's tensor conventions.
//
// Written for this project: nvdiffrast needs CUDA (or OpenGL) and no maintained CPU library offers a
// differentiable rasteriser with its API. Like hash_grid_cpu.cpp this file has no torch headers (it is
// called through ctypes with raw pointers), so the one-time build takes seconds.
//
// Conventions (nvdiffrast's): `pos` (B, V, 4) clip-space positions, `tri` (F, 3) int32. Pixel (px, py)
// has its centre at NDC ((2 px + 1) / W - 1, (2 py + 1) / H - 1): image row 0 is y = -1. The raster
// (B, H, W, 4) holds (u, v, z/w, triangle id + 1), where u and v are the perspective-correct barycentric
// weights of the triangle's first and second vertex; 0 everywhere for uncovered pixels.
//
// Geometry in 2-D homogeneous coordinates (x, y, w): for the pixel q = (qx, qy, 1) the edge functions
// e_i = q . (v_j x v_k) ((i, j, k) cyclic) are proportional to the perspective-correct barycentrics, so
// lambda_i = e_i / sum(e), and z/w = sum(e_i z_i) / sum(e_i w_i). Every quantity is computed in double
// precision; the pure-PyTorch reference uses the same formulas in float64, so both agree to rounding.
// Triangles with a vertex at w <= 0 are skipped (no near-plane clipping) and fragments outside
// -1 <= z/w <= 1 are discarded. Ties in depth go to the lower triangle id, whatever the thread count.
//
// Antialiasing (the analytic silhouette antialiasing of Laine et al. 2020, in a simple 1-D form): for
// every pair of 4-neighbouring pixels with different triangle ids, the occluder is the pixel whose
// triangle is nearer (or the covered one when the other shows background). If a silhouette edge of the
// occluder's triangle or of the same-facing triangles near it (a boundary edge, or one whose neighbour faces
// the other way; see find_crossing) crosses the segment
// between the pixel centres at fraction f from the occluder (horizontal pairs take the edges steeper than 45°,
// vertical pairs the flatter ones), the pixel whose half contains the crossing
// is blended towards the other one's colour: by 0.5 - f (occluder) or f - 0.5 (the other). The blend
// weight is differentiable in the edge's vertex positions: that is the silhouette gradient.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#include <omp.h>

namespace {

int clamp_threads(int n) { return n < 1 ? 1 : n; }

// out[i] = sum over threads k of scratch[k * n + i]: per-thread gradient buffers, reduced in a fixed order
// (deterministic for a given thread count).
void reduce_thread_buffers(const float* scratch, int nt, int64_t n, float* out) {
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    float t = 0.f;
    for (int k = 0; k < nt; ++k) t += scratch[(int64_t)k * n + i];
    out[i] = t;
  }
}

struct V3 {
  double x, y, w;
};

inline V3 cross(const V3& a, const V3& b) {
  return {a.y * b.w - a.w * b.y, a.w * b.x - a.x * b.w, a.x * b.y - a.y * b.x};
}

inline double dot(const V3& a, const V3& b) { return a.x * b.x + a.y * b.y + a.w * b.w; }

inline V3 load_v3(const float* p) { return {p[0], p[1], p[3]}; }

// Per-triangle plane coefficients: e_i(q) = c[i] . q, and the pixel bounding box.
struct TriSetup {
  V3 c[3];
  V3 zp, wp;  // sum(z_i c_i), sum(w_i c_i): numerator and denominator of z/w
  int x0, x1, y0, y1;
  bool valid;
};

inline double ndc_x(int px, int W) { return (2.0 * px + 1.0) / W - 1.0; }

void setup_triangles(const float* pos, int64_t V, const int32_t* tri, int64_t F, int H, int W,
                     std::vector<TriSetup>& out, int nt) {
  out.resize(F);
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t f = 0; f < F; ++f) {
    TriSetup& s = out[f];
    s.valid = false;
    int32_t i0 = tri[3 * f], i1 = tri[3 * f + 1], i2 = tri[3 * f + 2];
    if (i0 < 0 || i1 < 0 || i2 < 0 || i0 >= V || i1 >= V || i2 >= V) continue;
    const float* p[3] = {pos + 4 * (int64_t)i0, pos + 4 * (int64_t)i1, pos + 4 * (int64_t)i2};
    if (!(p[0][3] > 0.f && p[1][3] > 0.f && p[2][3] > 0.f)) continue;
    V3 v[3] = {load_v3(p[0]), load_v3(p[1]), load_v3(p[2])};
    s.c[0] = cross(v[1], v[2]);
    s.c[1] = cross(v[2], v[0]);
    s.c[2] = cross(v[0], v[1]);
    double det = dot(v[0], s.c[0]);
    if (det == 0.0 || !std::isfinite(det)) continue;
    s.zp = {0, 0, 0};
    s.wp = {0, 0, 0};
    for (int i = 0; i < 3; ++i) {
      double z = p[i][2], w = p[i][3];
      s.zp.x += z * s.c[i].x; s.zp.y += z * s.c[i].y; s.zp.w += z * s.c[i].w;
      s.wp.x += w * s.c[i].x; s.wp.y += w * s.c[i].y; s.wp.w += w * s.c[i].w;
    }
    double xmin = 1e30, xmax = -1e30, ymin = 1e30, ymax = -1e30;
    for (int i = 0; i < 3; ++i) {
      double sx = (v[i].x / v[i].w + 1.0) * 0.5 * W - 0.5;  // pixel-centre units
      double sy = (v[i].y / v[i].w + 1.0) * 0.5 * H - 0.5;
      xmin = sx < xmin ? sx : xmin; xmax = sx > xmax ? sx : xmax;
      ymin = sy < ymin ? sy : ymin; ymax = sy > ymax ? sy : ymax;
    }
    if (!(xmax >= 0 && ymax >= 0 && xmin <= W - 1 && ymin <= H - 1)) continue;
    // one pixel of slack: the exact test below decides
    s.x0 = (int)std::max(0.0, std::floor(xmin));
    s.x1 = (int)std::min((double)W - 1, std::ceil(xmax));
    s.y0 = (int)std::max(0.0, std::floor(ymin));
    s.y1 = (int)std::min((double)H - 1, std::ceil(ymax));
    s.valid = true;
  }
}

// Coverage and depth of triangle s at pixel q; false when not covered or clipped in z.
inline bool fragment(const TriSetup& s, const V3& q, double& depth) {
  double e0 = dot(s.c[0], q), e1 = dot(s.c[1], q), e2 = dot(s.c[2], q);
  double sum = e0 + e1 + e2;
  if (sum == 0.0) return false;
  if (sum > 0) {
    if (e0 < 0 || e1 < 0 || e2 < 0) return false;
  } else {
    if (e0 > 0 || e1 > 0 || e2 > 0) return false;
  }
  double num = dot(s.zp, q), den = dot(s.wp, q);
  if (den == 0.0) return false;
  depth = num / den;
  return depth >= -1.0 && depth <= 1.0;
}

constexpr int kBandRows = 8;

}  // namespace

extern "C" {

int rs_abi_version() { return 5; }

// rast (B, H, W, 4) = (u, v, z/w, id + 1).
int rs_rasterize_forward(const float* pos, int64_t B, int64_t V, const int32_t* tri, int64_t F, int H, int W,
                         float* rast, int n_threads) {
  int nt = clamp_threads(n_threads);
  std::memset(rast, 0, sizeof(float) * B * H * W * 4);
  int n_bands = (H + kBandRows - 1) / kBandRows;
  std::vector<TriSetup> setup;
  for (int64_t b = 0; b < B; ++b) {
    const float* pb = pos + b * V * 4;
    setup_triangles(pb, V, tri, F, H, W, setup, nt);
    // bin triangles into bands of rows (in id order, so ties keep the lower id)
    std::vector<int64_t> count(n_bands + 1, 0);
    for (int64_t f = 0; f < F; ++f)
      if (setup[f].valid)
        for (int k = setup[f].y0 / kBandRows; k <= setup[f].y1 / kBandRows; ++k) count[k + 1]++;
    for (int k = 0; k < n_bands; ++k) count[k + 1] += count[k];
    std::vector<int64_t> fill(count.begin(), count.end() - 1);
    std::vector<int32_t> binned(count[n_bands]);
    for (int64_t f = 0; f < F; ++f)
      if (setup[f].valid)
        for (int k = setup[f].y0 / kBandRows; k <= setup[f].y1 / kBandRows; ++k) binned[fill[k]++] = (int32_t)f;
    float* rb = rast + b * (int64_t)H * W * 4;
#pragma omp parallel num_threads(nt)
    {
      std::vector<double> zbuf(kBandRows * (size_t)W);
      std::vector<int32_t> ibuf(kBandRows * (size_t)W);
#pragma omp for schedule(dynamic, 1)
      for (int k = 0; k < n_bands; ++k) {
        int r0 = k * kBandRows, r1 = std::min(H, r0 + kBandRows);
        std::fill(zbuf.begin(), zbuf.end(), 2.0);
        std::fill(ibuf.begin(), ibuf.end(), -1);
        for (int64_t j = count[k]; j < count[k + 1]; ++j) {
          int32_t f = binned[j];
          const TriSetup& s = setup[f];
          int ya = std::max(r0, s.y0), yb = std::min(r1 - 1, s.y1);
          for (int py = ya; py <= yb; ++py) {
            double qy = ndc_x(py, H);
            for (int px = s.x0; px <= s.x1; ++px) {
              V3 q = {ndc_x(px, W), qy, 1.0};
              double d;
              if (!fragment(s, q, d)) continue;
              size_t o = (size_t)(py - r0) * W + px;
              if (d < zbuf[o]) {
                zbuf[o] = d;
                ibuf[o] = f;
              }
            }
          }
        }
        for (int py = r0; py < r1; ++py) {
          double qy = ndc_x(py, H);
          for (int px = 0; px < W; ++px) {
            int32_t f = ibuf[(size_t)(py - r0) * W + px];
            if (f < 0) continue;
            const TriSetup& s = setup[f];
            V3 q = {ndc_x(px, W), qy, 1.0};
            double e0 = dot(s.c[0], q), e1 = dot(s.c[1], q), e2 = dot(s.c[2], q);
            double sum = e0 + e1 + e2;
            float* o = rb + ((int64_t)py * W + px) * 4;
            o[0] = (float)(e0 / sum);
            o[1] = (float)(e1 / sum);
            o[2] = (float)zbuf[(size_t)(py - r0) * W + px];
            o[3] = (float)(f + 1);
          }
        }
      }
    }
  }
  return 0;
}

// grad_pos (B, V, 4) from grad_rast (B, H, W, 4) (channels u, v, z/w; the id channel has no gradient).
// scratch: n_threads * V * 4 floats.
int rs_rasterize_backward(const float* pos, int64_t B, int64_t V, const int32_t* tri, int64_t F, int H, int W,
                          const float* rast, const float* grad_rast, float* grad_pos, float* scratch,
                          int n_threads) {
  int nt = clamp_threads(n_threads);
  for (int64_t b = 0; b < B; ++b) {
    const float* pb = pos + b * V * 4;
    const float* rb = rast + b * (int64_t)H * W * 4;
    const float* gb = grad_rast + b * (int64_t)H * W * 4;
    std::memset(scratch, 0, sizeof(float) * nt * V * 4);
#pragma omp parallel num_threads(nt)
    {
      float* acc = scratch + (int64_t)omp_get_thread_num() * V * 4;
#pragma omp for schedule(static)
      for (int py = 0; py < H; ++py) {
        double qy = ndc_x(py, H);
        for (int px = 0; px < W; ++px) {
          int64_t o = ((int64_t)py * W + px) * 4;
          int f = (int)rb[o + 3] - 1;
          if (f < 0) continue;
          double gu = gb[o], gv = gb[o + 1], gd = gb[o + 2];
          if (gu == 0 && gv == 0 && gd == 0) continue;
          int32_t idx[3] = {tri[3 * f], tri[3 * f + 1], tri[3 * f + 2]};
          V3 v[3];
          double z[3];
          for (int i = 0; i < 3; ++i) {
            v[i] = load_v3(pb + 4 * (int64_t)idx[i]);
            z[i] = pb[4 * (int64_t)idx[i] + 2];
          }
          V3 q = {ndc_x(px, W), qy, 1.0};
          V3 c0 = cross(v[1], v[2]), c1 = cross(v[2], v[0]), c2 = cross(v[0], v[1]);
          double e[3] = {dot(c0, q), dot(c1, q), dot(c2, q)};
          double s = e[0] + e[1] + e[2];
          double lam[3] = {e[0] / s, e[1] / s, e[2] / s};
          double Wd = lam[0] * v[0].w + lam[1] * v[1].w + lam[2] * v[2].w;
          double Z = lam[0] * z[0] + lam[1] * z[1] + lam[2] * z[2];
          double d = Z / Wd;
          double gl[3] = {gu, gv, 0.0};
          for (int i = 0; i < 3; ++i) gl[i] += gd * (z[i] - d * v[i].w) / Wd;
          double mean = gl[0] * lam[0] + gl[1] * lam[1] + gl[2] * lam[2];
          double ge[3] = {(gl[0] - mean) / s, (gl[1] - mean) / s, (gl[2] - mean) / s};
          V3 g[3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
          // d e_i / d v_j for e_i = q . (v_j x v_k): v_k x q, and d / d v_k: q x v_j
          for (int i = 0; i < 3; ++i) {
            int j = (i + 1) % 3, k = (i + 2) % 3;
            V3 dj = cross(v[k], q), dk = cross(q, v[j]);
            g[j].x += ge[i] * dj.x; g[j].y += ge[i] * dj.y; g[j].w += ge[i] * dj.w;
            g[k].x += ge[i] * dk.x; g[k].y += ge[i] * dk.y; g[k].w += ge[i] * dk.w;
          }
          for (int i = 0; i < 3; ++i) {
            float* a = acc + 4 * (int64_t)idx[i];
            a[0] += (float)g[i].x;
            a[1] += (float)g[i].y;
            a[2] += (float)(gd * lam[i] / Wd);
            a[3] += (float)(g[i].w - gd * d * lam[i] / Wd);
          }
        }
      }
    }
    reduce_thread_buffers(scratch, nt, V * 4, grad_pos + b * V * 4);
  }
  return 0;
}

}  // extern "C"

namespace {

// The silhouette crossing of one pixel pair. `o` is the occluder pixel, `n` its neighbour, both (px, py);
// returns false when no silhouette edge of the occluder's triangle crosses the segment between them.
struct Crossing {
  double f;          // fraction of the way from o to n
  int32_t va, vb;    // edge vertices
  double dfd[2][3];  // d f / d (x, y, w) of va and vb
};

inline bool facing(const float* pos, const int32_t* tri, int64_t f) {
  V3 a = load_v3(pos + 4 * (int64_t)tri[3 * f]);
  V3 b = load_v3(pos + 4 * (int64_t)tri[3 * f + 1]);
  V3 c = load_v3(pos + 4 * (int64_t)tri[3 * f + 2]);
  return dot(a, cross(b, c)) > 0;
}

bool edge_crossing(const float* pos, int32_t ia, int32_t ib, int ox, int oy, int nx, int ny, int H, int W,
                   Crossing& cr) {
  bool horizontal = oy == ny;
  const float* pa = pos + 4 * (int64_t)ia;
  const float* pb = pos + 4 * (int64_t)ib;
  // screen positions in pixel-centre units; "s" runs along the pair, "t" across it
  double ax = (pa[0] / pa[3] + 1.0) * 0.5 * W - 0.5, ay = (pa[1] / pa[3] + 1.0) * 0.5 * H - 0.5;
  double bx = (pb[0] / pb[3] + 1.0) * 0.5 * W - 0.5, by = (pb[1] / pb[3] + 1.0) * 0.5 * H - 0.5;
  double as = horizontal ? ax : ay, at = horizontal ? ay : ax;
  double bs = horizontal ? bx : by, bt = horizontal ? by : bx;
  double line = horizontal ? oy : ox;
  double start = horizontal ? ox : oy;
  double dir = horizontal ? (nx - ox) : (ny - oy);
  double dt = bt - at;
  // each edge is handled by the pairs across it: horizontal pairs for steep edges, vertical pairs for
  // flat ones, so no pixel is blended twice for the same edge
  double ds = std::fabs(bs - as);
  if (horizontal ? std::fabs(dt) < ds : std::fabs(dt) <= ds) return false;
  double t = (line - at) / dt;
  if (t < 0.0 || t > 1.0) return false;
  double cs = as + t * (bs - as);
  double f_ = (cs - start) * dir;
  if (f_ < 0.0 || f_ > 1.0) return false;
  cr.f = f_;
  cr.va = ia;
  cr.vb = ib;
  // d f / d (as, at, bs, bt)
  double dcs_das = 1.0 - t, dcs_dbs = t, dcs_dt = bs - as;
  double dt_dat = (t - 1.0) / dt, dt_dbt = -t / dt;
  double d_as = dir * dcs_das, d_bs = dir * dcs_dbs;
  double d_at = dir * dcs_dt * dt_dat, d_bt = dir * dcs_dt * dt_dbt;
  double dax = horizontal ? d_as : d_at, day = horizontal ? d_at : d_as;
  double dbx = horizontal ? d_bs : d_bt, dby = horizontal ? d_bt : d_bs;
  // screen = (clip / w + 1) * size / 2 - 0.5
  cr.dfd[0][0] = dax * 0.5 * W / pa[3];
  cr.dfd[0][1] = day * 0.5 * H / pa[3];
  cr.dfd[0][2] = -(dax * 0.5 * W * pa[0] + day * 0.5 * H * pa[1]) / ((double)pa[3] * pa[3]);
  cr.dfd[1][0] = dbx * 0.5 * W / pb[3];
  cr.dfd[1][1] = dby * 0.5 * H / pb[3];
  cr.dfd[1][2] = -(dbx * 0.5 * W * pb[0] + dby * 0.5 * H * pb[1]) / ((double)pb[3] * pb[3]);
  return true;
}

// The silhouette edges searched are those of the occluder's triangle, then those of the triangles reached
// from it through same-facing edge neighbours, breadth first (one step when the neighbour pixel shows another
// surface, kBackgroundDepth steps when it shows background): near a silhouette the triangles next to the
// outline are slivers that cover no pixel centre, so the covered triangle can be a few steps away from it.
constexpr int kBackgroundDepth = 3;
constexpr int kMaxCandidates = 1 + 3 + 9 + 27;

bool find_crossing(const float* pos, const int32_t* tri, const int32_t* opp, int64_t f, int ox, int oy, int nx,
                   int ny, int H, int W, bool background_neighbour, Crossing& cr) {
  bool front = facing(pos, tri, f);
  int64_t cand[kMaxCandidates];
  int n = 1, level_start = 0, level_end = 1;
  cand[0] = f;
  int depth = background_neighbour ? kBackgroundDepth : 1;
  for (int d = 0; d < depth; ++d) {
    for (int i = level_start; i < level_end; ++i) {
      for (int k = 0; k < 3; ++k) {
        int64_t h = cand[i] >= 0 ? opp[3 * cand[i] + k] : -1;
        if (h >= 0 && facing(pos, tri, h) != front) h = -1;
        cand[n++] = h;
      }
    }
    level_start = level_end;
    level_end = n;
  }
  for (int c = 0; c < n; ++c) {
    int64_t g = cand[c];
    if (g < 0) continue;
    for (int k = 0; k < 3; ++k) {
      int32_t h = opp[3 * g + k];
      if (h >= 0 && facing(pos, tri, h) == front) continue;  // interior edge, not a silhouette
      int32_t ia = tri[3 * g + (k + 1) % 3], ib = tri[3 * g + (k + 2) % 3];
      if (edge_crossing(pos, ia, ib, ox, oy, nx, ny, H, W, cr)) return true;
    }
  }
  return false;
}

// One pixel pair (p, n): the blended pixel m, its weight w and the crossing. False: no blending.
inline bool pair_blend(const float* pos, const int32_t* tri, const int32_t* opp, const float* rast, int px, int py,
                       int nx, int ny, int H, int W, int64_t& m, int64_t& other, double& weight, double& sign,
                       Crossing& cr) {
  int64_t ip = (int64_t)py * W + px, in = (int64_t)ny * W + nx;
  int idp = (int)rast[4 * ip + 3], idn = (int)rast[4 * in + 3];
  if (idp == idn) return false;
  bool p_occludes;
  if (idn == 0) p_occludes = true;
  else if (idp == 0) p_occludes = false;
  else {
    float dp = rast[4 * ip + 2], dn = rast[4 * in + 2];
    p_occludes = dp < dn || (dp == dn && idp < idn);
  }
  int64_t io = p_occludes ? ip : in, ix = p_occludes ? in : ip;
  int ox = p_occludes ? px : nx, oy = p_occludes ? py : ny;
  int xx = p_occludes ? nx : px, xy = p_occludes ? ny : py;
  int64_t f = (int64_t)rast[4 * io + 3] - 1;
  bool background = (int)rast[4 * ix + 3] == 0;
  if (!find_crossing(pos, tri, opp, f, ox, oy, xx, xy, H, W, background, cr)) return false;
  if (cr.f < 0.5) {  // the edge cuts the occluder's pixel: it shows some of the other side
    m = io; other = ix; weight = 0.5 - cr.f; sign = -1.0;
  } else {  // the edge cuts the neighbour's pixel: it shows some of the occluder
    m = ix; other = io; weight = cr.f - 0.5; sign = 1.0;
  }
  return weight > 0.0;
}

}  // namespace

extern "C" {

// out (B, H, W, C) = color + blends. opp (F, 3): triangle across the edge opposite vertex k, or -1.
int rs_antialias_forward(const float* color, int64_t B, int H, int W, int C, const float* rast, const float* pos,
                         int64_t V, const int32_t* tri, int64_t F, const int32_t* opp, float* out, int n_threads) {
  int nt = clamp_threads(n_threads);
  std::memcpy(out, color, sizeof(float) * B * H * W * C);
  for (int64_t b = 0; b < B; ++b) {
    const float* cb = color + b * (int64_t)H * W * C;
    const float* rb = rast + b * (int64_t)H * W * 4;
    const float* pb = pos + b * V * 4;
    float* ob = out + b * (int64_t)H * W * C;
    // rows of one parity in parallel: pairs of row y touch rows y and y + 1 only
    for (int parity = 0; parity < 2; ++parity) {
#pragma omp parallel for schedule(static) num_threads(nt)
      for (int py = parity; py < H; py += 2) {
        for (int px = 0; px < W; ++px) {
          for (int d = 0; d < 2; ++d) {
            int nx = px + (d == 0), ny = py + (d == 1);
            if (nx >= W || ny >= H) continue;
            int64_t m, other;
            double w, sign;
            Crossing cr;
            if (!pair_blend(pb, tri, opp, rb, px, py, nx, ny, H, W, m, other, w, sign, cr)) continue;
            for (int c = 0; c < C; ++c) ob[m * C + c] += (float)(w * (cb[other * C + c] - cb[m * C + c]));
          }
        }
      }
    }
  }
  return 0;
}

// grad_color (B, H, W, C) and grad_pos (B, V, 4) (x, y, w only). scratch: n_threads * V * 4 floats.
int rs_antialias_backward(const float* color, int64_t B, int H, int W, int C, const float* rast, const float* pos,
                          int64_t V, const int32_t* tri, int64_t F, const int32_t* opp, const float* grad_out,
                          float* grad_color, float* grad_pos, float* scratch, float pos_gradient_boost,
                          int n_threads) {
  int nt = clamp_threads(n_threads);
  std::memcpy(grad_color, grad_out, sizeof(float) * B * H * W * C);
  for (int64_t b = 0; b < B; ++b) {
    const float* cb = color + b * (int64_t)H * W * C;
    const float* rb = rast + b * (int64_t)H * W * 4;
    const float* pb = pos + b * V * 4;
    const float* gob = grad_out + b * (int64_t)H * W * C;
    float* gcb = grad_color + b * (int64_t)H * W * C;
    std::memset(scratch, 0, sizeof(float) * nt * V * 4);
    for (int parity = 0; parity < 2; ++parity) {
#pragma omp parallel num_threads(nt)
      {
        float* acc = scratch + (int64_t)omp_get_thread_num() * V * 4;
#pragma omp for schedule(static)
        for (int py = parity; py < H; py += 2) {
          for (int px = 0; px < W; ++px) {
            for (int d = 0; d < 2; ++d) {
              int nx = px + (d == 0), ny = py + (d == 1);
              if (nx >= W || ny >= H) continue;
              int64_t m, other;
              double w, sign;
              Crossing cr;
              if (!pair_blend(pb, tri, opp, rb, px, py, nx, ny, H, W, m, other, w, sign, cr)) continue;
              double gw = 0.0;
              for (int c = 0; c < C; ++c) {
                double g = gob[m * C + c];
                gcb[m * C + c] -= (float)(w * g);
                gcb[other * C + c] += (float)(w * g);
                gw += g * (cb[other * C + c] - cb[m * C + c]);
              }
              // w = 0.5 - f (sign -1) or f - 0.5 (sign +1)
              double gf = gw * sign * pos_gradient_boost;
              int32_t vv[2] = {cr.va, cr.vb};
              for (int e = 0; e < 2; ++e) {
                float* a = acc + 4 * (int64_t)vv[e];
                a[0] += (float)(gf * cr.dfd[e][0]);
                a[1] += (float)(gf * cr.dfd[e][1]);
                a[3] += (float)(gf * cr.dfd[e][2]);
              }
            }
          }
        }
      }
    }
    reduce_thread_buffers(scratch, nt, V * 4, grad_pos + b * V * 4);
  }
  return 0;
}

}  // extern "C"

extern "C" {

// out (B, H, W, C) = u a0 + v a1 + (1 - u - v) a2 of the pixel's triangle; attr (Ba, V, C) with Ba = 1 or B.
int rs_interpolate_forward(const float* attr, int64_t Ba, int64_t V, int C, const float* rast, int64_t B, int H,
                           int W, const int32_t* tri, float* out, int n_threads) {
  int nt = clamp_threads(n_threads);
  int64_t n_pix = (int64_t)H * W;
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < B * n_pix; ++i) {
    const float* r = rast + 4 * i;
    float* o = out + i * C;
    int f = (int)r[3] - 1;
    if (f < 0) {
      for (int c = 0; c < C; ++c) o[c] = 0.f;
      continue;
    }
    const float* a = attr + (Ba > 1 ? (i / n_pix) * V * C : 0);
    const float* a0 = a + (int64_t)tri[3 * f] * C;
    const float* a1 = a + (int64_t)tri[3 * f + 1] * C;
    const float* a2 = a + (int64_t)tri[3 * f + 2] * C;
    float u = r[0], v = r[1];
    for (int c = 0; c < C; ++c) o[c] = a2[c] + u * (a0[c] - a2[c]) + v * (a1[c] - a2[c]);
  }
  return 0;
}

// grad_attr (Ba, V, C) (if not null; scratch n_threads * Ba * V * C floats) and grad_rast (B, H, W, 4) (if not null).
int rs_interpolate_backward(const float* attr, int64_t Ba, int64_t V, int C, const float* rast, int64_t B, int H,
                            int W, const int32_t* tri, const float* grad_out, float* grad_attr, float* grad_rast,
                            float* scratch, int n_threads) {
  int nt = clamp_threads(n_threads);
  int64_t n_pix = (int64_t)H * W;
  int64_t attr_size = Ba * V * C;
  if (grad_attr) std::memset(scratch, 0, sizeof(float) * nt * attr_size);
#pragma omp parallel num_threads(nt)
  {
    float* acc = grad_attr ? scratch + (int64_t)omp_get_thread_num() * attr_size : nullptr;
#pragma omp for schedule(static)
    for (int64_t i = 0; i < B * n_pix; ++i) {
      const float* r = rast + 4 * i;
      const float* g = grad_out + i * C;
      int f = (int)r[3] - 1;
      if (grad_rast) {
        float* gr = grad_rast + 4 * i;
        gr[0] = gr[1] = gr[2] = gr[3] = 0.f;
      }
      if (f < 0) continue;
      int64_t base = Ba > 1 ? (i / n_pix) * V * C : 0;
      int64_t i0 = base + (int64_t)tri[3 * f] * C, i1 = base + (int64_t)tri[3 * f + 1] * C,
              i2 = base + (int64_t)tri[3 * f + 2] * C;
      float u = r[0], v = r[1], w = 1.f - u - v;
      if (acc) {
        for (int c = 0; c < C; ++c) {
          acc[i0 + c] += u * g[c];
          acc[i1 + c] += v * g[c];
          acc[i2 + c] += w * g[c];
        }
      }
      if (grad_rast) {
        float gu = 0.f, gv = 0.f;
        for (int c = 0; c < C; ++c) {
          gu += g[c] * (attr[i0 + c] - attr[i2 + c]);
          gv += g[c] * (attr[i1 + c] - attr[i2 + c]);
        }
        grad_rast[4 * i] = gu;
        grad_rast[4 * i + 1] = gv;
      }
    }
  }
  if (grad_attr) reduce_thread_buffers(scratch, nt, attr_size, grad_attr);
  return 0;
}

}  // extern "C"

#include <algorithm>
#include <utility>

extern "C" {

// opp (F, 3): the triangle across the edge opposite vertex k (vertices k+1, k+2), -1 on boundary and
// non-manifold edges. Same result as reference.construct_topology.
int rs_construct_topology(const int32_t* tri, int64_t F, int64_t V, int32_t* opp) {
  std::vector<std::pair<uint64_t, int64_t>> edges(3 * F);
  for (int64_t k = 0; k < 3; ++k) {
    for (int64_t f = 0; f < F; ++f) {
      uint64_t a = (uint32_t)tri[3 * f + (k + 1) % 3], b = (uint32_t)tri[3 * f + (k + 2) % 3];
      uint64_t lo = a < b ? a : b, hi = a < b ? b : a;
      edges[k * F + f] = {lo * (uint64_t)(V + 1) + hi, k * F + f};
    }
  }
  std::sort(edges.begin(), edges.end());
  for (int64_t i = 0; i < 3 * F; ++i) opp[i] = -1;  // filled as (k, f), transposed below
  std::vector<int32_t> flat(3 * F, -1);
  int64_t i = 0;
  while (i < 3 * F) {
    int64_t j = i + 1;
    while (j < 3 * F && edges[j].first == edges[i].first) ++j;
    if (j - i == 2) {
      int64_t e0 = edges[i].second, e1 = edges[i + 1].second;
      flat[e0] = (int32_t)(e1 % F);
      flat[e1] = (int32_t)(e0 % F);
    }
    i = j;
  }
  for (int64_t k = 0; k < 3; ++k)
    for (int64_t f = 0; f < F; ++f) opp[3 * f + k] = flat[k * F + f];
  return 0;
}

}  // extern "C"
