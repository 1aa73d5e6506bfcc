// Winograd F(4x4, 3x3) convolution for NHWC tensors on the CPU (comgan/winograd.py).
//
// A 3x3, stride-1, zero-padded convolution computed tile by tile: each 6x6 input tile (stride 4)
// is transformed, V = B^T d B; the 36 transformed positions are 36 independent GEMMs with the
// transformed weights U = G w G^T (done by at::bmm, i.e. oneDNN/MKL); the output tile is
// y = A^T M A. 36 multiplications per output tile and channel pair instead of 16 * 9 = 144.
// The backward pass is the exact transpose of the same linear maps (so gradients are those of the
// direct convolution up to rounding): dM = A dY A^T, dV = dM U^T, dx += B dV B^T (tiles overlap
// by two pixels), dU = sum over tiles of V^T dM, and dw = G^T dU G (in Python).
//
// Tiles run in blocks, so the transformed tiles of a block stay in cache between the transform
// and its GEMM; transforms are vectorised over CB channels at a time.
#include <torch/extension.h>
#include <ATen/Parallel.h>

namespace {
constexpr int CB = 32;  // channels per chunk (two AVX-512 or four AVX2 vectors of fp32)

// Vector forms over CB channels: each p[i] points at CB contiguous values.
template <typename T>
inline void bt6v(const T* const* d, T* const* o) {
#pragma omp simd
  for (int c = 0; c < CB; ++c) {
    const T d0 = d[0][c], d1 = d[1][c], d2 = d[2][c], d3 = d[3][c], d4 = d[4][c], d5 = d[5][c];
    o[0][c] = 4 * d0 - 5 * d2 + d4;
    o[1][c] = -4 * (d1 + d2) + d3 + d4;
    o[2][c] = 4 * (d1 - d2) - d3 + d4;
    o[3][c] = 2 * (d3 - d1) - d2 + d4;
    o[4][c] = 2 * (d1 - d3) - d2 + d4;
    o[5][c] = 4 * d1 - 5 * d3 + d5;
  }
}
template <typename T>
inline void b6v(const T* const* v, T* const* o) {
#pragma omp simd
  for (int c = 0; c < CB; ++c) {
    const T v0 = v[0][c], v1 = v[1][c], v2 = v[2][c], v3 = v[3][c], v4 = v[4][c], v5 = v[5][c];
    o[0][c] = 4 * v0;
    o[1][c] = 4 * (v2 - v1 + v5) + 2 * (v4 - v3);
    o[2][c] = -5 * v0 - 4 * (v1 + v2) - v3 - v4;
    o[3][c] = v1 - v2 + 2 * (v3 - v4) - 5 * v5;
    o[4][c] = v0 + v1 + v2 + v3 + v4;
    o[5][c] = v5;
  }
}
template <typename T>
inline void at6v(const T* const* m, T* const* o) {
#pragma omp simd
  for (int c = 0; c < CB; ++c) {
    const T m0 = m[0][c], m1 = m[1][c], m2 = m[2][c], m3 = m[3][c], m4 = m[4][c], m5 = m[5][c];
    const T s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    o[0][c] = m0 + s12 + s34;
    o[1][c] = d12 + 2 * d34;
    o[2][c] = s12 + 4 * s34;
    o[3][c] = d12 + 8 * d34 + m5;
  }
}
template <typename T>
inline void a6v(const T* const* y, T* const* o) {
#pragma omp simd
  for (int c = 0; c < CB; ++c) {
    const T y0 = y[0][c], y1 = y[1][c], y2 = y[2][c], y3 = y[3][c];
    const T e = y0 + y2, f = y1 + y3, e4 = y0 + 4 * y2, f4 = 2 * y1 + 8 * y3;
    o[0][c] = y0;
    o[1][c] = e + f;
    o[2][c] = e - f;
    o[3][c] = e4 + f4;
    o[4][c] = e4 - f4;
    o[5][c] = y3;
  }
}

// Transformed tiles live in [36, tiles, C] buffers: position (a, b) of a tile is row
// (a * 6 + b) * tiles + tile. These move one tile's 36 positions, channels c0 .. c0 + cb, between
// such a buffer and a local [6][6][CB] array (zero beyond cb).
template <typename T>
inline void store_positions(const T (&v)[6][6][CB], T* buf, int64_t tiles, int64_t tile, int64_t C, int64_t c0, int cb) {
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b) {
      T* dst = buf + ((a * 6 + b) * tiles + tile) * C + c0;
      for (int c = 0; c < cb; ++c) dst[c] = v[a][b][c];
    }
}
template <typename T>
inline void load_positions(const T* buf, int64_t tiles, int64_t tile, int64_t C, int64_t c0, int cb, T (&v)[6][6][CB]) {
  for (int a = 0; a < 6; ++a)
    for (int b = 0; b < 6; ++b) {
      const T* src = buf + ((a * 6 + b) * tiles + tile) * C + c0;
      for (int c = 0; c < cb; ++c) v[a][b][c] = src[c];
      for (int c = cb; c < CB; ++c) v[a][b][c] = 0;
    }
}

// x: [N, H, W, C] contiguous -> V: [36, N*th*tw, C]
template <typename T>
void input_transform(const T* x, T* V, int64_t N, int64_t H, int64_t W, int64_t C, int64_t t0, int64_t t1) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, tiles = t1 - t0;
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    T d[6][6][CB], tmp[6][6][CB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (th * tw), i = (t / tw) % th, j = t % tw;
      for (int64_t c0 = 0; c0 < C; c0 += CB) {
        const int cb = (int)std::min<int64_t>(CB, C - c0);
        for (int r = 0; r < 6; ++r) {
          const int64_t y = 4 * i - 1 + r;
          for (int s = 0; s < 6; ++s) {
            const int64_t xx = 4 * j - 1 + s;
            if (y < 0 || y >= H || xx < 0 || xx >= W) {
              for (int c = 0; c < CB; ++c) d[r][s][c] = 0;
            } else {
              const T* src = x + ((n * H + y) * W + xx) * C + c0;
              for (int c = 0; c < cb; ++c) d[r][s][c] = src[c];
              for (int c = cb; c < CB; ++c) d[r][s][c] = 0;
            }
          }
        }
        for (int s = 0; s < 6; ++s) {
          const T* in[6] = {d[0][s], d[1][s], d[2][s], d[3][s], d[4][s], d[5][s]};
          T* out[6] = {tmp[0][s], tmp[1][s], tmp[2][s], tmp[3][s], tmp[4][s], tmp[5][s]};
          bt6v(in, out);
        }
        for (int a = 0; a < 6; ++a) {
          const T* in[6] = {tmp[a][0], tmp[a][1], tmp[a][2], tmp[a][3], tmp[a][4], tmp[a][5]};
          T* out[6] = {d[a][0], d[a][1], d[a][2], d[a][3], d[a][4], d[a][5]};
          bt6v(in, out);
        }
        store_positions(d, V, tiles, t - t0, C, c0, cb);
      }
    }
  });
}

// M: [36, tiles, K] -> y: [N, H, W, K]
template <typename T>
void output_transform(const T* M, T* y, int64_t N, int64_t H, int64_t W, int64_t K, int64_t t0, int64_t t1) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, tiles = t1 - t0;
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    T m[6][6][CB], tmp[4][6][CB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (th * tw), i = (t / tw) % th, j = t % tw;
      for (int64_t k0 = 0; k0 < K; k0 += CB) {
        const int kb = (int)std::min<int64_t>(CB, K - k0);
        load_positions(M, tiles, t - t0, K, k0, kb, m);
        for (int b = 0; b < 6; ++b) {
          const T* in[6] = {m[0][b], m[1][b], m[2][b], m[3][b], m[4][b], m[5][b]};
          T* out[4] = {tmp[0][b], tmp[1][b], tmp[2][b], tmp[3][b]};
          at6v(in, out);
        }
        for (int p = 0; p < 4; ++p) {
          const int64_t yy = 4 * i + p;
          if (yy >= H) break;
          T row[4][CB];
          {
            const T* in[6] = {tmp[p][0], tmp[p][1], tmp[p][2], tmp[p][3], tmp[p][4], tmp[p][5]};
            T* out[4] = {row[0], row[1], row[2], row[3]};
            at6v(in, out);
          }
          for (int q = 0; q < 4; ++q) {
            const int64_t xx = 4 * j + q;
            if (xx >= W) break;
            T* dst = y + ((n * H + yy) * W + xx) * K + k0;
            for (int c = 0; c < kb; ++c) dst[c] = row[q][c];
          }
        }
      }
    }
  });
}

// dY: [N, H, W, K] -> dM: [36, tiles, K]  (transpose of output_transform)
template <typename T>
void output_transform_backward(const T* dy, T* dM, int64_t N, int64_t H, int64_t W, int64_t K, int64_t t0, int64_t t1) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, tiles = t1 - t0;
  at::parallel_for(t0, t1, 1, [&](int64_t begin, int64_t end) {
    T g[4][4][CB], tmp[6][4][CB], o[6][6][CB];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / (th * tw), i = (t / tw) % th, j = t % tw;
      for (int64_t k0 = 0; k0 < K; k0 += CB) {
        const int kb = (int)std::min<int64_t>(CB, K - k0);
        for (int p = 0; p < 4; ++p) {
          const int64_t yy = 4 * i + p;
          for (int q = 0; q < 4; ++q) {
            const int64_t xx = 4 * j + q;
            if (yy >= H || xx >= W) { for (int c = 0; c < CB; ++c) g[p][q][c] = 0; continue; }
            const T* src = dy + ((n * H + yy) * W + xx) * K + k0;
            for (int c = 0; c < kb; ++c) g[p][q][c] = src[c];
            for (int c = kb; c < CB; ++c) g[p][q][c] = 0;
          }
        }
        for (int q = 0; q < 4; ++q) {
          const T* in[4] = {g[0][q], g[1][q], g[2][q], g[3][q]};
          T* out[6] = {tmp[0][q], tmp[1][q], tmp[2][q], tmp[3][q], tmp[4][q], tmp[5][q]};
          a6v(in, out);
        }
        for (int a = 0; a < 6; ++a) {
          const T* in[4] = {tmp[a][0], tmp[a][1], tmp[a][2], tmp[a][3]};
          T* out[6] = {o[a][0], o[a][1], o[a][2], o[a][3], o[a][4], o[a][5]};
          a6v(in, out);
        }
        store_positions(o, dM, tiles, t - t0, K, k0, kb);
      }
    }
  });
}

// dV: [36, t1 - t0, C] -> dx: [N, H, W, C] += (transpose of input_transform; overlapping tiles
// add). Tiles of neighbouring tile rows overlap by two pixel rows, tiles two rows apart never do:
// even tile rows run in parallel first, then odd ones, each split into rows x channel chunks, so
// no two threads write the same element.
template <typename T>
void input_transform_backward(const T* dV, T* dx, int64_t N, int64_t H, int64_t W, int64_t C, int64_t t0, int64_t t1) {
  const int64_t th = (H + 3) / 4, tw = (W + 3) / 4, tiles = t1 - t0;
  const int64_t chunks = (C + CB - 1) / CB;
  const int64_t row_first = t0 / tw, row_last = (t1 - 1) / tw;  // global tile rows (n * th + i)
  for (int64_t parity = 0; parity < 2; ++parity) {
    const int64_t first = row_first + ((row_first % 2 == parity) ? 0 : 1);
    const int64_t rows = first > row_last ? 0 : (row_last - first) / 2 + 1;
    at::parallel_for(0, rows * chunks, 1, [&](int64_t begin, int64_t end) {
      T v[6][6][CB], tmp[6][6][CB];
      for (int64_t job = begin; job < end; ++job) {
        const int64_t row = first + 2 * (job / chunks), c0 = (job % chunks) * CB;
        const int cb = (int)std::min<int64_t>(CB, C - c0);
        const int64_t n = row / th, i = row % th;
        const int64_t t_begin = std::max(t0, row * tw), t_end = std::min(t1, (row + 1) * tw);
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t j = t % tw;
          load_positions(dV, tiles, t - t0, C, c0, cb, v);
          for (int b = 0; b < 6; ++b) {
            const T* in[6] = {v[0][b], v[1][b], v[2][b], v[3][b], v[4][b], v[5][b]};
            T* out[6] = {tmp[0][b], tmp[1][b], tmp[2][b], tmp[3][b], tmp[4][b], tmp[5][b]};
            b6v(in, out);
          }
          for (int r = 0; r < 6; ++r) {
            const int64_t y = 4 * i - 1 + r;
            if (y < 0 || y >= H) continue;
            T row_out[6][CB];
            {
              const T* in[6] = {tmp[r][0], tmp[r][1], tmp[r][2], tmp[r][3], tmp[r][4], tmp[r][5]};
              T* out[6] = {row_out[0], row_out[1], row_out[2], row_out[3], row_out[4], row_out[5]};
              b6v(in, out);
            }
            for (int s = 0; s < 6; ++s) {
              const int64_t xx = 4 * j - 1 + s;
              if (xx < 0 || xx >= W) continue;
              T* dst = dx + ((n * H + y) * W + xx) * C + c0;
              for (int c = 0; c < cb; ++c) dst[c] += row_out[s][c];
            }
          }
        }
      }
    });
  }
}

void check(const torch::Tensor& t, int dim) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.dim() == dim,
              "winograd: expected a contiguous ", dim, "-d CPU tensor, got ", t.sizes());
}

// x [N, H, W, C] and transformed weights U [36, C, K]
void check_pair(const torch::Tensor& x, const torch::Tensor& U) {
  check(x, 4); check(U, 3);
  TORCH_CHECK(U.size(0) == 36 && U.size(1) == x.size(3), "winograd: weights ", U.sizes(), " do not fit input ", x.sizes());
  TORCH_CHECK(U.scalar_type() == x.scalar_type(), "winograd: input and weights differ in dtype");
}
}  // namespace


// y = conv3x3(x, w) with U = G w G^T given as [36, C, K]; x NHWC [N, H, W, C]; y NHWC.
torch::Tensor forward(torch::Tensor x, torch::Tensor U, int64_t block) {
  check_pair(x, U);
  TORCH_CHECK(block > 0, "winograd: block must be positive");
  const auto N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), K = U.size(2);
  const int64_t tiles = N * ((H + 3) / 4) * ((W + 3) / 4);
  auto y = torch::empty({N, H, W, K}, x.options());
  auto V = torch::empty({36, block, C}, x.options());
  auto M = torch::empty({36, block, K}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_forward", [&] {
    for (int64_t t0 = 0; t0 < tiles; t0 += block) {
      const int64_t t1 = std::min(tiles, t0 + block), nb = t1 - t0;
      auto Vb = V.narrow(1, 0, nb), Mb = M.narrow(1, 0, nb);
      if (nb < block) { Vb = Vb.contiguous(); Mb = Mb.contiguous(); }
      input_transform<scalar_t>(x.data_ptr<scalar_t>(), Vb.data_ptr<scalar_t>(), N, H, W, C, t0, t1);
      at::bmm_out(Mb, Vb, U);
      output_transform<scalar_t>(Mb.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), N, H, W, K, t0, t1);
    }
  });
  return y;
}

// (dx or empty, dU or empty) from dy NHWC [N, H, W, K].
std::vector<torch::Tensor> backward(torch::Tensor x, torch::Tensor U, torch::Tensor dy, bool need_dx, bool need_dU, int64_t block) {
  check_pair(x, U); check(dy, 4);
  const auto N = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3), K = U.size(2);
  TORCH_CHECK(dy.size(0) == N && dy.size(1) == H && dy.size(2) == W && dy.size(3) == K && dy.scalar_type() == x.scalar_type(),
              "winograd: gradient ", dy.sizes(), " does not fit output [", N, ", ", H, ", ", W, ", ", K, "]");
  TORCH_CHECK(block > 0, "winograd: block must be positive");
  const int64_t tiles = N * ((H + 3) / 4) * ((W + 3) / 4);
  auto dx = need_dx ? torch::zeros({N, H, W, C}, x.options()) : torch::Tensor();
  auto dU = need_dU ? torch::zeros({36, C, K}, x.options()) : torch::Tensor();
  auto Ut = U.transpose(1, 2);
  auto dM = torch::empty({36, block, K}, x.options());
  auto V = torch::empty({36, block, C}, x.options());
  auto dU_block = need_dU ? torch::empty({36, C, K}, x.options()) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "winograd_backward", [&] {
    for (int64_t t0 = 0; t0 < tiles; t0 += block) {
      const int64_t t1 = std::min(tiles, t0 + block), nb = t1 - t0;
      auto dMb = dM.narrow(1, 0, nb), Vb = V.narrow(1, 0, nb);
      if (nb < block) { dMb = dMb.contiguous(); Vb = Vb.contiguous(); }
      output_transform_backward<scalar_t>(dy.data_ptr<scalar_t>(), dMb.data_ptr<scalar_t>(), N, H, W, K, t0, t1);
      if (need_dx) {
        at::bmm_out(Vb, dMb, Ut);
        input_transform_backward<scalar_t>(Vb.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), N, H, W, C, t0, t1);
      }
      if (need_dU) {
        input_transform<scalar_t>(x.data_ptr<scalar_t>(), Vb.data_ptr<scalar_t>(), N, H, W, C, t0, t1);
        at::bmm_out(dU_block, Vb.transpose(1, 2), dMb);  // not baddbmm_: FLOP counters see bmm
        dU.add_(dU_block);
      }
    }
  });
  return {dx, dU};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
