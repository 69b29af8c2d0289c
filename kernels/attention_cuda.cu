#include "kernels/attention_cuda.h"

#include <cmath>
#include <string>

#include "kernels/check.h"
#include "kernels/cuda_check.h"
#include "kernels/tile_cuda.cuh"

namespace s0 {
namespace {

constexpr int kMaxHeadDim = 256;

using tile::kThreads;  // every tile kernel runs a 16 x 16 grid of threads (see Tile)
using tile::Ld;
using tile::LoadTile;
using tile::LoadVector;
using tile::RowMax;
using tile::RowSum;
using tile::SmemPlan;
using tile::Tile;

struct Shape {
  int64_t num_seqs;
  int nh, nkv, d, group;
  float scale;  // d^-0.5
  __device__ int64_t Q(int64_t t, int h) const { return (t * nh + h) * d; }     // q, o, dq rows
  __device__ int64_t Kv(int64_t t, int g) const { return (t * nkv + g) * d; }   // k, v rows
  __device__ int64_t Stat(int64_t t, int h) const { return t * nh + h; }        // lse, D
};

// Tile `index` of a sequence: rows [first, first + rows) of the sequence, tokens from
// seq_begin + first.
struct TileRef {
  int64_t seq_begin = 0, seq_len = 0, first = 0;
  int index = 0, rows = 0;
};

__device__ int64_t NumTiles(int64_t len, int br) { return (len + br - 1) / br; }
__device__ int TileRows(int64_t len, int64_t first, int br) {
  return int(len - first < br ? len - first : br);
}

// Global tile ids number the br-row tiles of sequence 0, then those of sequence 1, and so on.
__device__ bool FindTile(const int32_t* cu, int64_t num_seqs, int64_t id, int br, TileRef& ref) {
  int64_t first_id = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t begin = cu[s], len = cu[s + 1] - begin, n = NumTiles(len, br);
    if (id < first_id + n) {
      ref.seq_begin = begin;
      ref.seq_len = len;
      ref.index = int(id - first_id);
      ref.first = int64_t(ref.index) * br;
      ref.rows = TileRows(len, ref.first, br);
      return true;
    }
    first_id += n;
  }
  return false;
}

// An upper bound of the tile count of any packing of T tokens into N sequences:
// sum_s ceil(len_s / br) <= (T + (br - 1) N) / br. Surplus blocks exit at once.
int64_t MaxTiles(const AttentionPackedDims& d, int br) {
  return (d.tokens + (br - 1) * d.num_seqs) / br;
}

// Shared memory of the three tile kernels: `tiles` [br, Ld(d)] row tiles, `squares` [br, Ld(br)]
// probability-like tiles and `vectors` [br] row statistics.
struct TileSmem {
  int64_t tile[4], square[2], vector[2], floats;
  __host__ __device__ TileSmem(int d, int br, int tiles, int squares, int vectors) {
    SmemPlan p;
    for (int i = 0; i < tiles; ++i) tile[i] = p.Take(int64_t(br) * Ld(d));
    for (int i = 0; i < squares; ++i) square[i] = p.Take(int64_t(br) * Ld(br));
    for (int i = 0; i < vectors; ++i) vector[i] = p.Take(br);
    floats = p.floats;
  }
};
__host__ __device__ TileSmem ForwardSmem(int d, int br) { return TileSmem(d, br, 3, 1, 0); }
__host__ __device__ TileSmem BackwardKvSmem(int d, int br) { return TileSmem(d, br, 4, 2, 2); }
__host__ __device__ TileSmem BackwardQSmem(int d, int br) { return TileSmem(d, br, 4, 1, 2); }

// Per (query tile, query head): online softmax over the key tiles up to the diagonal.
template <int TM, int TN>
__global__ void __launch_bounds__(kThreads)
    ForwardKernel(Shape sh, AttentionPackedInputs in, float* out, float* lse) {
  constexpr int BR = 16 * TM;
  TileRef tq;
  if (!FindTile(in.cu_seqlens, sh.num_seqs, blockIdx.x, BR, tq)) return;
  const int h = blockIdx.y, g = h / sh.group, d = sh.d, ld = Ld(d), lp = Ld(BR);
  extern __shared__ float smem[];
  const TileSmem at = ForwardSmem(d, BR);
  float* qs = smem + at.tile[0];  // [BR, ld]
  float* ks = smem + at.tile[1];
  float* vs = smem + at.tile[2];
  float* ps = smem + at.square[0];  // [BR, lp] probabilities (unnormalised)
  const int64_t q0 = tq.seq_begin + tq.first;

  LoadTile(qs, ld, BR, d, tq.rows, [&](int r, int c) { return in.q[sh.Q(q0 + r, h) + c]; });
  Tile<TM, TN> o;
  o.Zero();
  float m[TM], l[TM];
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
  }
  for (int kt = 0; kt <= tq.index; ++kt) {
    const int64_t k_first = int64_t(kt) * BR, k0 = tq.seq_begin + k_first;
    const int k_rows = TileRows(tq.seq_len, k_first, BR);
    LoadTile(ks, ld, BR, d, k_rows, [&](int r, int c) { return in.k[sh.Kv(k0 + r, g) + c]; });
    LoadTile(vs, ld, BR, d, k_rows, [&](int r, int c) { return in.v[sh.Kv(k0 + r, g) + c]; });
    __syncthreads();
    Tile<TM, TM> s;
    s.Zero();
    s.Mma(BR, BR, d, [&](int r, int c) { return qs[r * ld + c]; },
          [&](int c, int j) { return ks[j * ld + c]; });
    // Every row sees key 0 of its sequence in the first key tile, so m is finite from then on
    // and each exponent below is of a value <= 0 (e^-inf = 0 for the first tile's alpha).
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = Tile<TM, TM>::Row(i);
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < TM; ++j) {
        const int c = Tile<TM, TM>::Col(j);
        if (k_first + c <= tq.first + r && c < k_rows) mx = fmaxf(mx, s.v[i][j] * sh.scale);
      }
      const float m_new = fmaxf(m[i], RowMax(mx));
      const float alpha = expf(m[i] - m_new);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < TM; ++j) {
        const int c = Tile<TM, TM>::Col(j);
        const bool visible = k_first + c <= tq.first + r && c < k_rows;
        const float p = visible ? expf(s.v[i][j] * sh.scale - m_new) : 0.f;
        ps[r * lp + c] = p;
        sum += p;
      }
      l[i] = l[i] * alpha + RowSum(sum);
      m[i] = m_new;
#pragma unroll
      for (int j = 0; j < TN; ++j) o.v[i][j] *= alpha;
    }
    __syncthreads();
    o.Mma(BR, d, BR, [&](int r, int j) { return ps[r * lp + j]; },
          [&](int j, int c) { return vs[j * ld + c]; });
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int r = Tile<TM, TN>::Row(i);
    if (r >= tq.rows) continue;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int c = Tile<TM, TN>::Col(j);
      if (c < d) out[sh.Q(q0 + r, h) + c] = o.v[i][j] / l[i];
    }
    if (threadIdx.x % 16 == 0) lse[sh.Stat(q0 + r, h)] = m[i] + logf(l[i]);
  }
}

// D[row] = a[row] . b[row] over rows of d floats: one warp per row.
__global__ void RowDotKernel(int64_t rows, int d, const float* a, const float* b, float* out) {
  const int64_t row = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  float s = 0.f;
  for (int c = lane; c < d; c += 32) s += a[row * d + c] * b[row * d + c];
  for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
  if (lane == 0) out[row] = s;
}

// Per (key tile, kv head): dK and dV of the tile's keys, over the query heads of the group and
// the query tiles from the diagonal on. Works on the transposed scores (rows = keys), so the
// accumulators' rows are the tile's keys.
template <int TM, int TN>
__global__ void __launch_bounds__(kThreads)
    BackwardKvKernel(Shape sh, AttentionPackedInputs in, const float* lse, const float* dsum,
                     const float* dout, AttentionPackedGrads grads) {
  constexpr int BR = 16 * TM;
  TileRef tk;
  if (!FindTile(in.cu_seqlens, sh.num_seqs, blockIdx.x, BR, tk)) return;
  const int g = blockIdx.y, d = sh.d, ld = Ld(d), lp = Ld(BR);
  extern __shared__ float smem[];
  const TileSmem at = BackwardKvSmem(d, BR);
  float* ks = smem + at.tile[0];  // [BR, ld]
  float* vs = smem + at.tile[1];
  float* qs = smem + at.tile[2];
  float* dos = smem + at.tile[3];
  float* pt = smem + at.square[0];   // [BR, lp] P^T
  float* dst = smem + at.square[1];  // [BR, lp] dS^T
  float* lse_s = smem + at.vector[0];
  float* dsum_s = smem + at.vector[1];
  const int64_t k0 = tk.seq_begin + tk.first;

  LoadTile(ks, ld, BR, d, tk.rows, [&](int r, int c) { return in.k[sh.Kv(k0 + r, g) + c]; });
  LoadTile(vs, ld, BR, d, tk.rows, [&](int r, int c) { return in.v[sh.Kv(k0 + r, g) + c]; });
  Tile<TM, TN> dk_acc, dv_acc;
  dk_acc.Zero();
  dv_acc.Zero();
  for (int h = g * sh.group; h < (g + 1) * sh.group; ++h) {
    for (int64_t qt = tk.index; qt < NumTiles(tk.seq_len, BR); ++qt) {
      const int64_t q_first = qt * BR, q0 = tk.seq_begin + q_first;
      const int q_rows = TileRows(tk.seq_len, q_first, BR);
      LoadTile(qs, ld, BR, d, q_rows, [&](int r, int c) { return in.q[sh.Q(q0 + r, h) + c]; });
      LoadTile(dos, ld, BR, d, q_rows, [&](int r, int c) { return dout[sh.Q(q0 + r, h) + c]; });
      LoadVector(lse_s, BR, q_rows, [&](int r) { return lse[sh.Stat(q0 + r, h)]; });
      LoadVector(dsum_s, BR, q_rows, [&](int r) { return dsum[sh.Stat(q0 + r, h)]; });
      __syncthreads();
      Tile<TM, TM> st, dpt;  // st[j][r] = k_j . q_r, dpt[j][r] = v_j . dO_r
      st.Zero();
      dpt.Zero();
      st.Mma(BR, BR, d, [&](int j, int c) { return ks[j * ld + c]; },
             [&](int c, int r) { return qs[r * ld + c]; });
      dpt.Mma(BR, BR, d, [&](int j, int c) { return vs[j * ld + c]; },
              [&](int c, int r) { return dos[r * ld + c]; });
#pragma unroll
      for (int i = 0; i < TM; ++i) {
        const int j = Tile<TM, TM>::Row(i);
#pragma unroll
        for (int jj = 0; jj < TM; ++jj) {
          const int r = Tile<TM, TM>::Col(jj);
          const bool visible = tk.first + j <= q_first + r && r < q_rows && j < tk.rows;
          const float p = visible ? expf(st.v[i][jj] * sh.scale - lse_s[r]) : 0.f;
          pt[j * lp + r] = p;
          dst[j * lp + r] = p * (dpt.v[i][jj] - dsum_s[r]);
        }
      }
      __syncthreads();
      dv_acc.Mma(BR, d, BR, [&](int j, int r) { return pt[j * lp + r]; },
                 [&](int r, int c) { return dos[r * ld + c]; });
      dk_acc.Mma(BR, d, BR, [&](int j, int r) { return dst[j * lp + r]; },
                 [&](int r, int c) { return qs[r * ld + c]; });
      __syncthreads();
    }
  }
  dk_acc.ForEach(tk.rows, d, [&](int j, int c, float x) {
    grads.dk[sh.Kv(k0 + j, g) + c] = sh.scale * x;
  });
  dv_acc.ForEach(tk.rows, d, [&](int j, int c, float x) { grads.dv[sh.Kv(k0 + j, g) + c] = x; });
}

// Per (query tile, query head): dQ over the key tiles up to the diagonal.
template <int TM, int TN>
__global__ void __launch_bounds__(kThreads)
    BackwardQKernel(Shape sh, AttentionPackedInputs in, const float* lse, const float* dsum,
                    const float* dout, AttentionPackedGrads grads) {
  constexpr int BR = 16 * TM;
  TileRef tq;
  if (!FindTile(in.cu_seqlens, sh.num_seqs, blockIdx.x, BR, tq)) return;
  const int h = blockIdx.y, g = h / sh.group, d = sh.d, ld = Ld(d), lp = Ld(BR);
  extern __shared__ float smem[];
  const TileSmem at = BackwardQSmem(d, BR);
  float* qs = smem + at.tile[0];  // [BR, ld]
  float* dos = smem + at.tile[1];
  float* ks = smem + at.tile[2];
  float* vs = smem + at.tile[3];
  float* dss = smem + at.square[0];  // [BR, lp] dS
  float* lse_s = smem + at.vector[0];
  float* dsum_s = smem + at.vector[1];
  const int64_t q0 = tq.seq_begin + tq.first;

  LoadTile(qs, ld, BR, d, tq.rows, [&](int r, int c) { return in.q[sh.Q(q0 + r, h) + c]; });
  LoadTile(dos, ld, BR, d, tq.rows, [&](int r, int c) { return dout[sh.Q(q0 + r, h) + c]; });
  LoadVector(lse_s, BR, tq.rows, [&](int r) { return lse[sh.Stat(q0 + r, h)]; });
  LoadVector(dsum_s, BR, tq.rows, [&](int r) { return dsum[sh.Stat(q0 + r, h)]; });
  Tile<TM, TN> dq_acc;
  dq_acc.Zero();
  for (int kt = 0; kt <= tq.index; ++kt) {
    const int64_t k_first = int64_t(kt) * BR, k0 = tq.seq_begin + k_first;
    const int k_rows = TileRows(tq.seq_len, k_first, BR);
    LoadTile(ks, ld, BR, d, k_rows, [&](int r, int c) { return in.k[sh.Kv(k0 + r, g) + c]; });
    LoadTile(vs, ld, BR, d, k_rows, [&](int r, int c) { return in.v[sh.Kv(k0 + r, g) + c]; });
    __syncthreads();
    Tile<TM, TM> s, dp;  // s[r][j] = q_r . k_j, dp[r][j] = dO_r . v_j
    s.Zero();
    dp.Zero();
    s.Mma(BR, BR, d, [&](int r, int c) { return qs[r * ld + c]; },
          [&](int c, int j) { return ks[j * ld + c]; });
    dp.Mma(BR, BR, d, [&](int r, int c) { return dos[r * ld + c]; },
           [&](int c, int j) { return vs[j * ld + c]; });
#pragma unroll
    for (int i = 0; i < TM; ++i) {
      const int r = Tile<TM, TM>::Row(i);
#pragma unroll
      for (int jj = 0; jj < TM; ++jj) {
        const int j = Tile<TM, TM>::Col(jj);
        const bool visible = k_first + j <= tq.first + r && j < k_rows && r < tq.rows;
        const float p = visible ? expf(s.v[i][jj] * sh.scale - lse_s[r]) : 0.f;
        dss[r * lp + j] = p * (dp.v[i][jj] - dsum_s[r]);
      }
    }
    __syncthreads();
    dq_acc.Mma(BR, d, BR, [&](int r, int j) { return dss[r * lp + j]; },
               [&](int j, int c) { return ks[j * ld + c]; });
    __syncthreads();
  }
  dq_acc.ForEach(tq.rows, d, [&](int r, int c, float x) {
    grads.dq[sh.Q(q0 + r, h) + c] = sh.scale * x;
  });
}

// ---------------------------------------------------------------------------------------------
// Host side.

Shape MakeShape(const AttentionPackedDims& d) {
  S0_CHECK(d.tokens >= 0 && d.tokens <= INT32_MAX && d.num_seqs >= 1);
  S0_CHECK(d.n_h > 0 && d.n_kv > 0 && d.n_h <= 65535);
  S0_CHECK_MSG(d.n_h % d.n_kv == 0, "query heads must be a multiple of kv heads");
  S0_CHECK_MSG(d.d > 0 && d.d <= kMaxHeadDim, "the CUDA attention supports head_dim <= 256");
  Shape sh;
  sh.num_seqs = d.num_seqs;
  sh.nh = int(d.n_h);
  sh.nkv = int(d.n_kv);
  sh.d = int(d.d);
  sh.group = sh.nh / sh.nkv;
  sh.scale = float(1.0 / std::sqrt(double(d.d)));  // as the CPU reference rounds it
  return sh;
}

void CheckInputs(const AttentionPackedInputs& in) {
  S0_CHECK(in.cu_seqlens && in.q && in.k && in.v);
}

// tile::Launch, naming this file's kernels in its errors.
template <typename... Args>
void Launch(Args... args) {
  tile::Launch("attention", args...);
}

// Tile rows and head-dim coverage by head dim: 64 x 64 up to d = 64, 64 x 128 up to 128, and
// 32 x 256 up to 256 (shared memory holds four [rows, d] fp32 tiles).
template <int TM_, int TN_>
struct TileShape {
  static constexpr int TM = TM_, TN = TN_, kRows = 16 * TM_;
};
template <class F>
void WithTileShape(int64_t d, F f) {
  if (d <= 64) {
    f(TileShape<4, 4>{});
  } else if (d <= 128) {
    f(TileShape<4, 8>{});
  } else {
    f(TileShape<2, 16>{});
  }
}

}  // namespace

void AttentionCudaForward(const AttentionPackedDims& dims, const AttentionPackedInputs& in,
                          float* out, float* lse, cudaStream_t stream) {
  const Shape sh = MakeShape(dims);
  CheckInputs(in);
  S0_CHECK(out && lse);
  WithTileShape(dims.d, [&](auto shape) {
    using S = decltype(shape);
    const dim3 grid(unsigned(MaxTiles(dims, S::kRows)), unsigned(sh.nh));
    Launch(ForwardKernel<S::TM, S::TN>, grid, ForwardSmem(sh.d, S::kRows).floats, stream, sh, in,
           out, lse);
  });
}

size_t AttentionBackwardWorkspaceBytes(const AttentionPackedDims& dims) {
  MakeShape(dims);
  return size_t(dims.tokens * dims.n_h) * sizeof(float);
}

void AttentionCudaBackward(const AttentionPackedDims& dims, const AttentionPackedInputs& in,
                           const float* out, const float* lse, const float* dout,
                           const AttentionPackedGrads& grads, void* workspace,
                           cudaStream_t stream) {
  const Shape sh = MakeShape(dims);
  CheckInputs(in);
  S0_CHECK(out && lse && dout && grads.dq && grads.dk && grads.dv);
  S0_CHECK(workspace || dims.tokens == 0);
  float* dsum = static_cast<float*>(workspace);
  const int64_t rows = dims.tokens * dims.n_h;
  Launch(RowDotKernel, dim3(unsigned((rows * 32 + kThreads - 1) / kThreads)), 0, stream, rows,
         sh.d, dout, out, dsum);
  WithTileShape(dims.d, [&](auto shape) {
    using S = decltype(shape);
    const unsigned tiles = unsigned(MaxTiles(dims, S::kRows));
    Launch(BackwardKvKernel<S::TM, S::TN>, dim3(tiles, unsigned(sh.nkv)),
           BackwardKvSmem(sh.d, S::kRows).floats, stream, sh, in, lse,
           static_cast<const float*>(dsum), dout, grads);
    Launch(BackwardQKernel<S::TM, S::TN>, dim3(tiles, unsigned(sh.nh)),
           BackwardQSmem(sh.d, S::kRows).floats, stream, sh, in, lse,
           static_cast<const float*>(dsum), dout, grads);
  });
}

}  // namespace s0
