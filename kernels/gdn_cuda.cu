#include "kernels/gdn_cuda.h"

#include <cmath>

#include "kernels/check.h"
#include "kernels/cuda_check.h"
#include "kernels/tile_cuda.cuh"

namespace s0 {
namespace {

constexpr int C = 64;             // chunk length, kGdnChunk of the CPU reference
constexpr int kMaxHeadDim = 128;  // d_k, d_v: what the register tiles below cover
constexpr int kStateCols = 32;    // value columns of the state per scan block
constexpr int kSlab = 16;         // state rows or columns streamed through shared memory at once

// Block-level building blocks (Tile, LoadTile, Ld, kThreads): kernels/tile_cuda.cuh.
using tile::kThreads;  // every kernel runs a 16 x 16 grid of threads (see Tile)
using tile::Ld;
using tile::LoadTile;
using tile::SmemPlan;
using tile::Tile;

constexpr int kLdC = Ld(C);             // [C, C] matrices
constexpr int kLdPair = Ld(C + 1);      // [C, C + 1] decay-factor gradients
constexpr int kLdState = Ld(kStateCols);
constexpr int kLdSlab = Ld(kSlab);

// ---------------------------------------------------------------------------------------------
// Block-level building blocks specific to these kernels. LoadTile's zero rows pad a short chunk:
// with g = 0, beta = 0 and zero q, k, v, dO they leave every result unchanged.

using ChunkTile = Tile<4, 8>;   // [C, d] with d <= kMaxHeadDim
using SquareTile = Tile<4, 4>;  // [C, C]
static_assert(16 * 4 == C && 16 * 8 == kMaxHeadDim, "tiles cover a chunk and a head");
static_assert(16 * 2 == kStateCols, "scan tiles cover a state column block");

__device__ bool RowLeader() { return threadIdx.x % 16 == 0; }

// Sum of v over the block, the same in every thread; red: kThreads / 32 floats of shared memory.
__device__ float BlockSum(float v, float* red) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float s = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) s += red[w];
  __syncthreads();
  return s;
}

// dst[r * ld + c] = s[r * kLdState + c] for r < rows, c < cols: a state column block from shared
// memory (row stride kLdState) out to global memory (row stride ld).
__device__ void StoreStateBlock(float* dst, int ld, const float* s, int rows, int cols) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += kThreads) {
    dst[(idx / cols) * ld + idx % cols] = s[(idx / cols) * kLdState + idx % cols];
  }
}

// ---------------------------------------------------------------------------------------------
// Shapes, packing, workspace.

struct Shape {
  int64_t num_seqs;
  int hk, hv, dk, dv, group;
  float scale;  // 1 / sqrt(d_k), rounded as the CPU reference rounds it
  __device__ int64_t Qk(int64_t t, int kh) const { return (t * hk + kh) * dk; }  // q, k rows
  __device__ int64_t V(int64_t t, int h) const { return (t * hv + h) * dv; }     // v, o rows
  __device__ int64_t Gate(int64_t t, int h) const { return t * hv + h; }         // g, beta
  __device__ int64_t HeadQk(int64_t t, int h) const { return (t * hv + h) * dk; }  // d*_head
};

struct ChunkRef {
  int64_t t0 = 0;  // first token
  int rows = 0;    // tokens in the chunk, 1..C
};

__device__ int64_t NumChunks(int64_t len) { return (len + C - 1) / C; }
__device__ int ChunkRows(int64_t len, int64_t chunk) {
  const int64_t left = len - chunk * C;
  return int(left < C ? left : C);
}

// Global chunk ids number the chunks of sequence 0, then those of sequence 1, and so on.
__device__ bool FindChunk(const int32_t* cu, int64_t num_seqs, int64_t id, ChunkRef& ref) {
  int64_t first = 0;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t begin = cu[s], len = cu[s + 1] - begin, n = NumChunks(len);
    if (id < first + n) {
      ref.t0 = begin + (id - first) * C;
      ref.rows = ChunkRows(len, id - first);
      return true;
    }
    first += n;
  }
  return false;
}

__device__ int64_t FirstChunk(const int32_t* cu, int64_t seq) {
  int64_t first = 0;
  for (int64_t s = 0; s < seq; ++s) first += NumChunks(cu[s + 1] - cu[s]);
  return first;
}

// An upper bound of the chunk count of any packing of T tokens into N sequences:
// sum_s ceil(len_s / C) <= (T + (C - 1) N) / C. Chunk-parallel grids use it; surplus blocks exit.
int64_t MaxChunks(const GdnPackedDims& d) { return (d.tokens + (C - 1) * d.num_seqs) / C; }

// Per-(chunk, value head) arrays are chunk-major, [MaxChunks, H_v, ...] ("base" = chunk id * H_v
// + h), C rows each: rows past a short chunk's end hold zeros (or are never read).
struct Workspace {
  float* w = nullptr;        // [.., C, d_k]    W
  float* u = nullptr;        // [.., C, d_v]    U, overwritten with Delta by the state scan
  float* a = nullptr;        // [.., C, C]      A[r][i] = e^(gamma_r-gamma_i) scale q_r . k_i, i<=r
  float* egamma = nullptr;   // [.., C]         e^gamma_r
  float* edecay = nullptr;   // [.., C]         e^(Gamma - gamma_r), Gamma = gamma of the last row
  float* states = nullptr;   // [.., d_k, d_v]  state at the chunk start
  float* tinv = nullptr;     // [.., C, C]      T = (I + L)^-1                      (backward)
  float* ddelta = nullptr;   // [.., C, d_v]    dDelta; first its intra-chunk part  (backward)
  float* dstates = nullptr;  // [.., d_k, d_v]  gradient w.r.t. the chunk-end state (backward)
  float* pair = nullptr;     // [.., C, C + 1]  decay-factor gradients, see BwdOutputKernel
  float* dq_head = nullptr;  // [T, H_v, d_k]   per value head; summed per key head at the end
  float* dk_head = nullptr;  // [T, H_v, d_k]
  float* dh0 = nullptr;      // [N, H_v, d_k, d_v] per sequence; summed at the end
};

// Lays the workspace out from `base` (nullptr: only sizes it); returns the bytes it needs.
size_t Carve(const GdnPackedDims& d, bool backward, char* base, Workspace& ws) {
  size_t used = 0;
  auto take = [&](int64_t floats) {
    float* p = base ? reinterpret_cast<float*>(base + used) : nullptr;
    used += (size_t(floats) * sizeof(float) + 255) / 256 * 256;
    return p;
  };
  const int64_t heads = MaxChunks(d) * d.num_v_heads, state = d.d_k * d.d_v;
  ws.w = take(heads * C * d.d_k);
  ws.u = take(heads * C * d.d_v);
  ws.a = take(heads * C * C);
  ws.egamma = take(heads * C);
  ws.edecay = take(heads * C);
  ws.states = take(heads * state);
  if (backward) {
    ws.tinv = take(heads * C * C);
    ws.ddelta = take(heads * C * d.d_v);
    ws.dstates = take(heads * state);
    ws.pair = take(heads * C * (C + 1));
    ws.dq_head = take(d.tokens * d.num_v_heads * d.d_k);
    ws.dk_head = take(d.tokens * d.num_v_heads * d.d_k);
    ws.dh0 = take(d.num_seqs * d.num_v_heads * state);
  }
  return used;
}

// ---------------------------------------------------------------------------------------------
// Per-chunk helpers.

// g and (when beta_out is set) beta of a chunk's rows; 0 past its end.
__device__ void LoadGates(const Shape& sh, const GdnPackedInputs& in, const ChunkRef& ch, int h,
                          float* g, float* beta) {
  for (int r = threadIdx.x; r < C; r += kThreads) {
    const bool valid = r < ch.rows;
    g[r] = valid ? in.g[sh.Gate(ch.t0 + r, h)] : 0.f;
    if (beta) beta[r] = valid ? in.beta[sh.Gate(ch.t0 + r, h)] : 0.f;
  }
}

// decay[r][i] = e^(g_{i+1} + ... + g_r) for i <= r, 0 above the diagonal; egamma[r] =
// e^(g_0 + ... + g_r) (the chunk-start factor, i = -1). Thread i + 1 sums the exponents of its
// column in order, exactly as the CPU reference: each is a sum of g <= 0, never a difference of
// cumulative sums. Needs g in shared memory; the caller synchronises afterwards.
__device__ void DecayFactors(const float* g, float* decay, float* egamma) {
  const int i = int(threadIdx.x) - 1;
  if (i >= C) return;
  float exponent = 0.f;
  for (int r = 0; r < C; ++r) {
    if (r > i) exponent += g[r];
    const float e = r >= i ? expf(exponent) : 0.f;
    if (i < 0) {
      egamma[r] = e;
    } else {
      decay[r * kLdC + i] = e;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Forward kernels (also the first half of the backward).

struct PrepareSmem {
  int64_t qv, k, l, decay_tinv, g, beta, egamma, floats;
  __host__ __device__ PrepareSmem(int dk, int dv) {
    SmemPlan p;
    qv = p.Take(C * Ld(dk > dv ? dk : dv));
    k = p.Take(C * Ld(dk));
    l = p.Take(C * kLdC);
    decay_tinv = p.Take(C * kLdC);
    g = p.Take(C);
    beta = p.Take(C);
    egamma = p.Take(C);
    floats = p.floats;
  }
};

// Per (chunk, value head): the decay factors, A, L[r][i] = beta_r (k_r . k_i) decay[r][i] (i < r),
// T = (I + L)^-1, W = T diag(beta e^gamma) K and U = T diag(beta) V (kernels.md §1.3; CPU
// PrepareChunk). Writes w, u, a, egamma, edecay, and tinv when the workspace has it.
__global__ void __launch_bounds__(kThreads)
    PrepareKernel(Shape sh, GdnPackedInputs in, Workspace ws) {
  ChunkRef ch;
  if (!FindChunk(in.cu_seqlens, sh.num_seqs, blockIdx.x, ch)) return;
  const int h = blockIdx.y, kh = h / sh.group, dk = sh.dk, dv = sh.dv, lk = Ld(dk), lv = Ld(dv);
  const int64_t base = int64_t(blockIdx.x) * sh.hv + h;
  extern __shared__ float smem[];
  const PrepareSmem at(dk, dv);
  float* qv = smem + at.qv;  // [C, lk] q * scale, later [C, lv] v
  float* ks = smem + at.k;   // [C, lk]
  float* l = smem + at.l;    // [C, kLdC]
  float* decay = smem + at.decay_tinv;  // [C, kLdC], then T
  float* tinv = decay;
  float* g = smem + at.g;
  float* beta = smem + at.beta;
  float* egamma = smem + at.egamma;

  LoadTile(qv, lk, C, dk, ch.rows,
           [&](int r, int c) { return sh.scale * in.q[sh.Qk(ch.t0 + r, kh) + c]; });
  LoadTile(ks, lk, C, dk, ch.rows, [&](int r, int c) { return in.k[sh.Qk(ch.t0 + r, kh) + c]; });
  LoadGates(sh, in, ch, h, g, beta);
  __syncthreads();
  DecayFactors(g, decay, egamma);
  __syncthreads();

  SquareTile qk;
  qk.Zero();
  qk.Mma(C, C, dk, [&](int r, int c) { return qv[r * lk + c]; },
         [&](int c, int i) { return ks[i * lk + c]; });
  float* a_out = ws.a + base * C * C;
  qk.ForEach(C, C, [&](int r, int i, float x) {
    a_out[r * C + i] = i <= r ? x * decay[r * kLdC + i] : 0.f;
  });
  SquareTile kk;
  kk.Zero();
  kk.Mma(C, C, dk, [&](int r, int c) { return ks[r * lk + c]; },
         [&](int c, int i) { return ks[i * lk + c]; });
  kk.ForEach(C, C, [&](int r, int i, float x) {
    l[r * kLdC + i] = i < r ? beta[r] * x * decay[r * kLdC + i] : 0.f;
  });
  if (threadIdx.x < C) {
    ws.egamma[base * C + threadIdx.x] = egamma[threadIdx.x];
    ws.edecay[base * C + threadIdx.x] = decay[(C - 1) * kLdC + threadIdx.x];
  }
  __syncthreads();

  // T column by column: thread c solves (I + L) x = e_c by forward substitution, summing
  // -L[r][i] x_i over i in ascending order as the CPU reference does.
  if (threadIdx.x < C) {
    const int c = threadIdx.x;
    for (int r = 0; r < c; ++r) tinv[r * kLdC + c] = 0.f;
    tinv[c * kLdC + c] = 1.f;
    for (int r = c + 1; r < C; ++r) {
      float s = 0.f;
      for (int i = c; i < r; ++i) s = fmaf(-l[r * kLdC + i], tinv[i * kLdC + c], s);
      tinv[r * kLdC + c] = s;
    }
  }
  LoadTile(qv, lv, C, dv, ch.rows, [&](int r, int c) { return in.v[sh.V(ch.t0 + r, h) + c]; });
  __syncthreads();
  if (ws.tinv) {
    for (int idx = threadIdx.x; idx < C * C; idx += kThreads) {
      ws.tinv[base * C * C + idx] = tinv[(idx / C) * kLdC + idx % C];
    }
  }

  ChunkTile w;
  w.Zero();
  w.Mma(C, dk, C, [&](int r, int i) { return tinv[r * kLdC + i] * beta[i] * egamma[i]; },
        [&](int i, int c) { return ks[i * lk + c]; });
  w.ForEach(C, dk, [&](int r, int c, float x) { ws.w[(base * C + r) * dk + c] = x; });
  ChunkTile u;
  u.Zero();
  u.Mma(C, dv, C, [&](int r, int i) { return tinv[r * kLdC + i] * beta[i]; },
        [&](int i, int c) { return qv[i * lv + c]; });
  u.ForEach(C, dv, [&](int r, int c, float x) { ws.u[(base * C + r) * dv + c] = x; });
}

// W and diag(e^(Gamma - gamma)) K take turns in one buffer (`wk`): the smaller footprint lets
// three blocks share a multiprocessor instead of two.
struct StateForwardSmem {
  int64_t s, wk, x, floats;
  __host__ __device__ explicit StateForwardSmem(int dk) {
    SmemPlan p;
    s = p.Take(dk * kLdState);
    wk = p.Take(C * Ld(dk));
    x = p.Take(C * kLdState);
    floats = p.floats;
  }
};

// Per (sequence, value head, block of kStateCols value columns), chunks in order, the state in
// shared memory (kernels.md §1.4; CPU ChunkDelta and ChunkStateUpdate):
//   H[c] = S;  Delta = U - W S;  S <- e^Gamma S + (diag(e^(Gamma - gamma)) K)^T Delta.
// Writes the chunk-start states and Delta (over U).
__global__ void __launch_bounds__(kThreads)
    StateForwardKernel(Shape sh, GdnPackedInputs in, Workspace ws) {
  const int seq = blockIdx.x, h = blockIdx.y, v0 = blockIdx.z * kStateCols;
  const int kh = h / sh.group, dk = sh.dk, dv = sh.dv, lk = Ld(dk);
  const int cols = min(kStateCols, dv - v0);
  const int64_t begin = in.cu_seqlens[seq], len = in.cu_seqlens[seq + 1] - begin;
  const int64_t first = FirstChunk(in.cu_seqlens, seq);
  extern __shared__ float smem[];
  const StateForwardSmem at(dk);
  float* s = smem + at.s;    // [d_k, kLdState]
  float* w = smem + at.wk;   // [C, lk] W, then
  float* kd = w;             //         diag(e^(Gamma - gamma)) K
  float* x = smem + at.x;    // [C, kLdState] U, then Delta

  LoadTile(s, kLdState, dk, cols, dk,
           [&](int r, int c) { return in.s0[(int64_t(h) * dk + r) * dv + v0 + c]; });
  for (int64_t c = 0; c < NumChunks(len); ++c) {
    const int64_t base = (first + c) * sh.hv + h, t0 = begin + c * C;
    const float* edecay = ws.edecay + base * C;
    float* u = ws.u + base * C * dv + v0;
    LoadTile(w, lk, C, dk, C, [&](int r, int k) { return ws.w[(base * C + r) * dk + k]; });
    LoadTile(x, kLdState, C, cols, C, [&](int r, int j) { return u[r * dv + j]; });
    __syncthreads();
    float* h_out = ws.states + base * dk * dv + v0;
    StoreStateBlock(h_out, dv, s, dk, cols);
    Tile<4, 2> delta;
    delta.Zero();
    delta.Mma(C, cols, dk, [&](int r, int k) { return w[r * lk + k]; },
              [&](int k, int j) { return s[k * kLdState + j]; });
    __syncthreads();  // W is read: its buffer takes K
    delta.ForEach(C, cols, [&](int r, int j, float w_s) {
      const float d = x[r * kLdState + j] - w_s;
      x[r * kLdState + j] = d;
      u[r * dv + j] = d;
    });
    LoadTile(kd, lk, C, dk, ChunkRows(len, c),
             [&](int r, int k) { return edecay[r] * in.k[sh.Qk(t0 + r, kh) + k]; });
    __syncthreads();
    const float e_total = ws.egamma[base * C + C - 1];
    Tile<8, 2> next;
    next.Zero();
    next.Mma(dk, cols, C, [&](int k, int r) { return kd[r * lk + k]; },
             [&](int r, int j) { return x[r * kLdState + j]; });
    next.ForEach(dk, cols, [&](int k, int j, float add) {
      s[k * kLdState + j] = e_total * s[k * kLdState + j] + add;
    });
    __syncthreads();
  }
}

struct OutputSmem {
  int64_t qe, a, x, slab, floats;
  __host__ __device__ OutputSmem(int dk, int dv) {
    SmemPlan p;
    qe = p.Take(C * Ld(dk));
    a = p.Take(C * kLdC);
    x = p.Take(C * Ld(dv));
    slab = p.Take(kSlab * Ld(dv));
    floats = p.floats;
  }
};

// Per (chunk, value head): o_r = e^gamma_r (scale q_r)^T H[c] + sum_{i <= r} A[r][i] Delta_i
// (kernels.md §1.5; CPU ChunkOutput). H[c] streams through shared memory by rows.
__global__ void __launch_bounds__(kThreads)
    OutputKernel(Shape sh, GdnPackedInputs in, Workspace ws, float* o) {
  ChunkRef ch;
  if (!FindChunk(in.cu_seqlens, sh.num_seqs, blockIdx.x, ch)) return;
  const int h = blockIdx.y, kh = h / sh.group, dk = sh.dk, dv = sh.dv, lk = Ld(dk), lv = Ld(dv);
  const int64_t base = int64_t(blockIdx.x) * sh.hv + h;
  extern __shared__ float smem[];
  const OutputSmem at(dk, dv);
  float* qe = smem + at.qe;  // [C, lk] diag(e^gamma) Q scale
  float* a = smem + at.a;    // [C, kLdC]
  float* dl = smem + at.x;   // [C, lv] Delta
  float* slab = smem + at.slab;
  const float* egamma = ws.egamma + base * C;

  LoadTile(qe, lk, C, dk, ch.rows,
           [&](int r, int c) { return sh.scale * in.q[sh.Qk(ch.t0 + r, kh) + c] * egamma[r]; });
  LoadTile(a, kLdC, C, C, C, [&](int r, int i) { return ws.a[(base * C + r) * C + i]; });
  LoadTile(dl, lv, C, dv, C, [&](int r, int c) { return ws.u[(base * C + r) * dv + c]; });
  __syncthreads();
  ChunkTile out;
  out.Zero();
  out.Mma(C, dv, C, [&](int r, int i) { return a[r * kLdC + i]; },
          [&](int i, int c) { return dl[i * lv + c]; });
  const float* state = ws.states + base * dk * dv;
  for (int k0 = 0; k0 < dk; k0 += kSlab) {
    const int n = min(kSlab, dk - k0);
    LoadTile(slab, lv, n, dv, n, [&](int r, int c) { return state[(k0 + r) * dv + c]; });
    __syncthreads();
    out.Mma(C, dv, n, [&](int r, int k) { return qe[r * lk + k0 + k]; },
            [&](int k, int c) { return slab[k * lv + c]; });
    __syncthreads();
  }
  out.ForEach(ch.rows, dv, [&](int r, int c, float x) { o[sh.V(ch.t0 + r, h) + c] = x; });
}

// ---------------------------------------------------------------------------------------------
// Backward kernels.

struct DDeltaLocalSmem {
  int64_t a, dout, floats;
  __host__ __device__ explicit DDeltaLocalSmem(int dv) {
    SmemPlan p;
    a = p.Take(C * kLdC);
    dout = p.Take(C * Ld(dv));
    floats = p.floats;
  }
};

// Per (chunk, value head): the intra-chunk part of dDelta, dDelta_i = sum_{r >= i} A[r][i] dO_r
// (kernels.md §2.1), into ws.ddelta; the reverse scan adds the carried part.
__global__ void __launch_bounds__(kThreads)
    DDeltaLocalKernel(Shape sh, GdnPackedInputs in, const float* dout, Workspace ws) {
  ChunkRef ch;
  if (!FindChunk(in.cu_seqlens, sh.num_seqs, blockIdx.x, ch)) return;
  const int h = blockIdx.y, dv = sh.dv, lv = Ld(dv);
  const int64_t base = int64_t(blockIdx.x) * sh.hv + h;
  extern __shared__ float smem[];
  const DDeltaLocalSmem at(dv);
  float* a = smem + at.a;       // [C, kLdC]
  float* dos = smem + at.dout;  // [C, lv]
  LoadTile(a, kLdC, C, C, C, [&](int r, int i) { return ws.a[(base * C + r) * C + i]; });
  LoadTile(dos, lv, C, dv, ch.rows, [&](int r, int c) { return dout[sh.V(ch.t0 + r, h) + c]; });
  __syncthreads();
  ChunkTile t;
  t.Zero();
  t.Mma(C, dv, C, [&](int i, int r) { return a[r * kLdC + i]; },
        [&](int r, int c) { return dos[r * lv + c]; });
  t.ForEach(C, dv, [&](int i, int c, float x) { ws.ddelta[(base * C + i) * dv + c] = x; });
}

// diag(e^(Gamma - gamma)) K and diag(e^gamma) Q scale take turns in one buffer (`kq`): the
// smaller footprint lets two blocks share a multiprocessor instead of one.
struct StateBackwardSmem {
  int64_t ds, kq, w, dout, dd, floats;
  __host__ __device__ explicit StateBackwardSmem(int dk) {
    SmemPlan p;
    ds = p.Take(dk * kLdState);
    kq = p.Take(C * Ld(dk));
    w = p.Take(C * Ld(dk));
    dout = p.Take(C * kLdState);
    dd = p.Take(C * kLdState);
    floats = p.floats;
  }
};

// Per (sequence, value head, block of kStateCols value columns), chunks in reverse, dS in shared
// memory from dS_final = 0 (kernels.md §2.2; CPU ChunkBackwardOutputAndState):
//   dH[c] = dS;  dDelta = dDelta_local + diag(e^(Gamma - gamma)) K dS;
//   dS <- e^Gamma dS + (diag(e^gamma) Q scale)^T dO - W^T dDelta;   dh0 = dS after chunk 0.
// Writes dDelta (over its local part), the chunk-end gradients (when ws.dstates is set) and the
// sequence's dh0.
__global__ void __launch_bounds__(kThreads)
    StateBackwardKernel(Shape sh, GdnPackedInputs in, const float* dout, Workspace ws) {
  const int seq = blockIdx.x, h = blockIdx.y, v0 = blockIdx.z * kStateCols;
  const int kh = h / sh.group, dk = sh.dk, dv = sh.dv, lk = Ld(dk);
  const int cols = min(kStateCols, dv - v0);
  const int64_t begin = in.cu_seqlens[seq], len = in.cu_seqlens[seq + 1] - begin;
  const int64_t first = FirstChunk(in.cu_seqlens, seq);
  extern __shared__ float smem[];
  const StateBackwardSmem at(dk);
  float* ds = smem + at.ds;      // [d_k, kLdState]
  float* kd = smem + at.kq;      // [C, lk] diag(e^(Gamma - gamma)) K, then
  float* qe = kd;                //         diag(e^gamma) Q scale
  float* w = smem + at.w;        // [C, lk]
  float* dos = smem + at.dout;   // [C, kLdState]
  float* dd = smem + at.dd;      // [C, kLdState] dDelta

  for (int idx = threadIdx.x; idx < dk * cols; idx += kThreads) {
    ds[(idx / cols) * kLdState + idx % cols] = 0.f;
  }
  __syncthreads();
  for (int64_t c = NumChunks(len) - 1; c >= 0; --c) {
    const int64_t base = (first + c) * sh.hv + h, t0 = begin + c * C;
    const int rows = ChunkRows(len, c);
    const float* edecay = ws.edecay + base * C;
    const float* egamma = ws.egamma + base * C;
    float* ddelta = ws.ddelta + base * C * dv + v0;
    LoadTile(kd, lk, C, dk, rows,
             [&](int r, int k) { return edecay[r] * in.k[sh.Qk(t0 + r, kh) + k]; });
    LoadTile(w, lk, C, dk, C, [&](int r, int k) { return ws.w[(base * C + r) * dk + k]; });
    LoadTile(dos, kLdState, C, cols, rows,
             [&](int r, int j) { return dout[sh.V(t0 + r, h) + v0 + j]; });
    LoadTile(dd, kLdState, C, cols, C, [&](int r, int j) { return ddelta[r * dv + j]; });
    __syncthreads();
    if (ws.dstates) {
      float* dh_out = ws.dstates + base * dk * dv + v0;
      StoreStateBlock(dh_out, dv, ds, dk, cols);
    }
    Tile<4, 2> carried;
    carried.Zero();
    carried.Mma(C, cols, dk, [&](int r, int k) { return kd[r * lk + k]; },
                [&](int k, int j) { return ds[k * kLdState + j]; });
    __syncthreads();  // K is read: its buffer takes Q
    carried.ForEach(C, cols, [&](int r, int j, float add) {
      const float x = dd[r * kLdState + j] + add;
      dd[r * kLdState + j] = x;
      ddelta[r * dv + j] = x;
    });
    LoadTile(qe, lk, C, dk, rows,
             [&](int r, int k) { return sh.scale * in.q[sh.Qk(t0 + r, kh) + k] * egamma[r]; });
    __syncthreads();
    const float e_total = egamma[C - 1];
    Tile<8, 2> next;
    next.Zero();
    next.Mma(dk, cols, C, [&](int k, int r) { return qe[r * lk + k]; },
             [&](int r, int j) { return dos[r * kLdState + j]; });
    next.Mma(dk, cols, C, [&](int k, int r) { return -w[r * lk + k]; },
             [&](int r, int j) { return dd[r * kLdState + j]; });
    next.ForEach(dk, cols, [&](int k, int j, float add) {
      ds[k * kLdState + j] = e_total * ds[k * kLdState + j] + add;
    });
    __syncthreads();
  }
  float* dh0 = ws.dh0 + (int64_t(seq) * sh.hv + h) * dk * dv + v0;
  StoreStateBlock(dh0, dv, ds, dk, cols);
}

struct BwdOutputSmem {
  int64_t qs, k, dout, delta, x, pair, shared, g, egamma, edecay, red, floats;
  __host__ __device__ BwdOutputSmem(int dk, int dv) {
    SmemPlan p;
    qs = p.Take(C * Ld(dk));
    k = p.Take(C * Ld(dk));
    dout = p.Take(C * Ld(dv));
    delta = p.Take(C * Ld(dv));
    x = p.Take(C * kLdC);
    pair = p.Take(C * kLdPair);
    const int64_t factors = 2 * C * kLdC, slabs = 2 * int64_t(dk) * kLdSlab;
    shared = p.Take(factors > slabs ? factors : slabs);  // decay and A, later two state slabs
    g = p.Take(C);
    egamma = p.Take(C);
    edecay = p.Take(C);
    red = p.Take(kThreads / 32);
    floats = p.floats;
  }
};

// Per (chunk, value head): the gradients through the output and the carried state (CPU
// ChunkBackwardOutputAndState), from S = H[c], dS_end = dH[c], Delta and dO. With
// X = (dO Delta^T) ⊙ decay on the causal triangle (diagonal included):
//   dq = scale (diag(e^gamma) dO S^T + X K)                     -> ws.dq_head (final)
//   dk = X^T Q scale + diag(e^(Gamma - gamma)) Delta dS_end^T   -> ws.dk_head (BwdWyKernel adds)
// and Pair(r, i), the gradient w.r.t. the factor e^(gamma_r - gamma_i) (i = -1: e^gamma_r):
//   Pair(r, i)     = (dO_r . Delta_i) A[r][i]                  i < r
//   Pair(r, -1)    = e^gamma_r (scale q_r) . (S dO_r)
//   Pair(C-1, -1) += e^Gamma <S, dS_end>
//   Pair(C-1, i)  += e^(Gamma - gamma_i) k_i . (dS_end Delta_i)  i < C - 1
// stored [C, C + 1] with column i + 1 holding Pair(., i) -> ws.pair.
__global__ void __launch_bounds__(kThreads)
    BwdOutputKernel(Shape sh, GdnPackedInputs in, const float* dout, Workspace ws) {
  ChunkRef ch;
  if (!FindChunk(in.cu_seqlens, sh.num_seqs, blockIdx.x, ch)) return;
  const int h = blockIdx.y, kh = h / sh.group, dk = sh.dk, dv = sh.dv, lk = Ld(dk), lv = Ld(dv);
  const int64_t base = int64_t(blockIdx.x) * sh.hv + h;
  extern __shared__ float smem[];
  const BwdOutputSmem at(dk, dv);
  float* qs = smem + at.qs;        // [C, lk] q * scale
  float* ks = smem + at.k;         // [C, lk]
  float* dos = smem + at.dout;     // [C, lv]
  float* delta = smem + at.delta;  // [C, lv]
  float* xm = smem + at.x;         // [C, kLdC] X
  float* pair = smem + at.pair;    // [C, kLdPair]
  float* decay = smem + at.shared;  // [C, kLdC]
  float* a = decay + C * kLdC;      // [C, kLdC]
  float* slab_s = smem + at.shared;         // [d_k, kLdSlab] columns v0.. of S
  float* slab_d = slab_s + dk * kLdSlab;    // [d_k, kLdSlab] the same of dS_end
  float* g = smem + at.g;
  float* egamma = smem + at.egamma;
  float* edecay = smem + at.edecay;
  float* red = smem + at.red;

  LoadTile(qs, lk, C, dk, ch.rows,
           [&](int r, int c) { return sh.scale * in.q[sh.Qk(ch.t0 + r, kh) + c]; });
  LoadTile(ks, lk, C, dk, ch.rows, [&](int r, int c) { return in.k[sh.Qk(ch.t0 + r, kh) + c]; });
  LoadTile(dos, lv, C, dv, ch.rows, [&](int r, int c) { return dout[sh.V(ch.t0 + r, h) + c]; });
  LoadTile(delta, lv, C, dv, C, [&](int r, int c) { return ws.u[(base * C + r) * dv + c]; });
  LoadTile(a, kLdC, C, C, C, [&](int r, int i) { return ws.a[(base * C + r) * C + i]; });
  LoadGates(sh, in, ch, h, g, nullptr);
  __syncthreads();
  DecayFactors(g, decay, egamma);
  __syncthreads();
  if (threadIdx.x < C) edecay[threadIdx.x] = decay[(C - 1) * kLdC + threadIdx.x];

  SquareTile da;
  da.Zero();
  da.Mma(C, C, dv, [&](int r, int c) { return dos[r * lv + c]; },
         [&](int c, int i) { return delta[i * lv + c]; });
  da.ForEach(C, C, [&](int r, int i, float x) {
    xm[r * kLdC + i] = i <= r ? x * decay[r * kLdC + i] : 0.f;
    pair[r * kLdPair + i + 1] = i < r ? x * a[r * kLdC + i] : 0.f;
  });
  __syncthreads();  // decay and A are dead: their space takes the state slabs

  // sdo_r = S dO_r and v2_i = dS_end Delta_i ([C, d_k]), S and dS_end streamed by value columns.
  ChunkTile sdo, v2;
  sdo.Zero();
  v2.Zero();
  float dot = 0.f;  // <S, dS_end>, this thread's share
  const float* state = ws.states + base * dk * dv;
  const float* dstate = ws.dstates + base * dk * dv;
  for (int v0 = 0; v0 < dv; v0 += kSlab) {
    const int n = min(kSlab, dv - v0);
    LoadTile(slab_s, kLdSlab, dk, n, dk, [&](int r, int c) { return state[r * dv + v0 + c]; });
    LoadTile(slab_d, kLdSlab, dk, n, dk, [&](int r, int c) { return dstate[r * dv + v0 + c]; });
    __syncthreads();
    for (int idx = threadIdx.x; idx < dk * n; idx += kThreads) {
      const int e = (idx / n) * kLdSlab + idx % n;
      dot += slab_s[e] * slab_d[e];
    }
    sdo.Mma(C, dk, n, [&](int r, int c) { return dos[r * lv + v0 + c]; },
            [&](int c, int k) { return slab_s[k * kLdSlab + c]; });
    v2.Mma(C, dk, n, [&](int r, int c) { return delta[r * lv + v0 + c]; },
           [&](int c, int k) { return slab_d[k * kLdSlab + c]; });
    __syncthreads();
  }
  dot = BlockSum(dot, red);
  float qdot[4], kdot[4];
  sdo.RowSums(dk, [&](int r, int k, float x) { return x * qs[r * lk + k]; }, qdot);
  v2.RowSums(dk, [&](int i, int k, float x) { return x * ks[i * lk + k]; }, kdot);
  if (RowLeader()) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ChunkTile::Row(i);
      pair[r * kLdPair] = egamma[r] * qdot[i] + (r == C - 1 ? egamma[C - 1] * dot : 0.f);
      if (r < C - 1) pair[(C - 1) * kLdPair + r + 1] += edecay[r] * kdot[i];
    }
  }

  ChunkTile dq;
  dq.Zero();
  dq.Mma(C, dk, C, [&](int r, int i) { return xm[r * kLdC + i]; },
         [&](int i, int k) { return ks[i * lk + k]; });
  dq.Combine(sdo, [&](int r, int, float x, float y) { return x + egamma[r] * y; });
  dq.ForEach(ch.rows, dk, [&](int r, int k, float x) {
    ws.dq_head[sh.HeadQk(ch.t0 + r, h) + k] = sh.scale * x;
  });
  ChunkTile dkt;
  dkt.Zero();
  dkt.Mma(C, dk, C, [&](int i, int r) { return xm[r * kLdC + i]; },
          [&](int r, int k) { return qs[r * lk + k]; });
  dkt.Combine(v2, [&](int i, int, float x, float y) { return x + edecay[i] * y; });
  dkt.ForEach(ch.rows, dk, [&](int i, int k, float x) {
    ws.dk_head[sh.HeadQk(ch.t0 + i, h) + k] = x;
  });
  __syncthreads();
  for (int idx = threadIdx.x; idx < C * (C + 1); idx += kThreads) {
    ws.pair[base * C * (C + 1) + idx] = pair[(idx / (C + 1)) * kLdPair + idx % (C + 1)];
  }
}

// The shared-memory arrays of BwdWyKernel.
struct WyArrays {
  float* dd;      // [C, lv] dDelta (= dU)
  float* ks;      // [C, lk]
  float* vs;      // [C, lv]
  float* dw;      // [C, lk] dW
  float* tinv;    // [C, kLdC]
  float* decay;   // [C, kLdC]
  float* m;       // [C, kLdC] dT, then X = T^T dT, then diag(beta) dL ⊙ decay
  float* pair;    // [C, kLdPair] decay-factor gradients, column i + 1 = Pair(., i)
  float* beta;    // [C]
  float* egamma;  // [C]
  float* dbeta;   // [C]
  int dk, dv, lk, lv;
};

// The backward through T = (I + L)^-1 and L[r][i] = beta_r (k_r . k_i) decay[r][i] (CPU
// ChunkBackwardWy, second half), given dW and dU: dT = dW Kt^T + dU Vt^T on the strict lower
// triangle (Kt = diag(beta e^gamma) K, Vt = diag(beta) V), X = T^T dT and dL = -X T^T, both kept
// on the strict lower triangle, dm = dL ⊙ decay. Leaves M = diag(beta) dm in a.m (for
// dk_r += sum_i M[r][i] k_i and dk_i += sum_r M[r][i] k_r) and adds dm (k_r . k_i) to dbeta_r and
// beta_r dm (k_r . k_i) to Pair(r, i). Every thread must call it; it ends with a barrier.
__device__ void WyThroughInverse(const WyArrays& a) {
  const int lk = a.lk, lv = a.lv;
  SquareTile t1, t2;
  t1.Zero();
  t2.Zero();
  t1.Mma(C, C, a.dk, [&](int r, int k) { return a.dw[r * lk + k]; },
         [&](int k, int j) { return a.ks[j * lk + k]; });
  t2.Mma(C, C, a.dv, [&](int r, int c) { return a.dd[r * lv + c]; },
         [&](int c, int j) { return a.vs[j * lv + c]; });
  t1.Combine(t2, [&](int r, int j, float x, float y) {
    return j < r ? a.beta[j] * (a.egamma[j] * x + y) : 0.f;
  });
  t1.ForEach(C, C, [&](int r, int j, float x) { a.m[r * kLdC + j] = x; });
  __syncthreads();
  SquareTile xt;
  xt.Zero();
  xt.Mma(C, C, C, [&](int p, int r) { return a.tinv[r * kLdC + p]; },
         [&](int r, int j) { return a.m[r * kLdC + j]; });
  __syncthreads();
  xt.ForEach(C, C, [&](int p, int j, float x) { a.m[p * kLdC + j] = j < p ? x : 0.f; });
  __syncthreads();
  SquareTile dm, kk;
  dm.Zero();
  kk.Zero();
  dm.Mma(C, C, C, [&](int r, int j) { return a.m[r * kLdC + j]; },
         [&](int j, int i) { return a.tinv[i * kLdC + j]; });
  kk.Mma(C, C, a.dk, [&](int r, int k) { return a.ks[r * lk + k]; },
         [&](int k, int i) { return a.ks[i * lk + k]; });
  dm.Combine(kk, [&](int r, int i, float x, float) {
    return i < r ? -x * a.decay[r * kLdC + i] : 0.f;
  });
  kk.Combine(dm, [&](int, int, float x, float y) { return y * x; });  // dm (k_r . k_i)
  float dbk[4];
  kk.RowSums(C, [&](int, int, float x) { return x; }, dbk);
  __syncthreads();  // X is dead
  dm.ForEach(C, C, [&](int r, int i, float x) { a.m[r * kLdC + i] = a.beta[r] * x; });
  kk.ForEach(C, C, [&](int r, int i, float x) {
    if (i < r) a.pair[r * kLdPair + i + 1] += a.beta[r] * x;
  });
  if (RowLeader()) {
#pragma unroll
    for (int i = 0; i < 4; ++i) a.dbeta[SquareTile::Row(i)] += dbk[i];
  }
  __syncthreads();
}

// dg_j from the decay-factor gradients: g_j enters exactly the factors e^(gamma_r - gamma_i)
// with i < j <= r, so dg_j = sum_{c <= j} suffix_j[c], suffix_j[c] = sum_{r >= j} pair[r][c]
// (column c = i + 1): column suffix sums, then row prefix sums; no row-minus-column differences,
// which would cancel O(1) terms under strong decay (CPU ChunkBackward). Overwrites pair; the
// sums land in thread r < rows. Every thread must call it.
__device__ float DecayGradsToDg(float* pair, int rows) {
  if (threadIdx.x <= C) {
    const int c = threadIdx.x;
    float s = 0.f;
    for (int r = C - 1; r >= 0; --r) {
      s += pair[r * kLdPair + c];
      pair[r * kLdPair + c] = s;
    }
  }
  __syncthreads();
  float dg = 0.f;
  if (int(threadIdx.x) < rows) {
    for (int c = 0; c <= int(threadIdx.x); ++c) dg += pair[threadIdx.x * kLdPair + c];
  }
  return dg;
}

struct BwdWySmem {
  int64_t dd, k, v, dw, tinv, decay, m, pair, slab, g, beta, egamma, dbeta, floats;
  __host__ __device__ BwdWySmem(int dk, int dv) {
    SmemPlan p;
    dd = p.Take(C * Ld(dv));
    k = p.Take(C * Ld(dk));
    v = p.Take(C * Ld(dv));
    dw = p.Take(C * Ld(dk));
    tinv = p.Take(C * kLdC);
    decay = p.Take(C * kLdC);
    m = p.Take(C * kLdC);
    pair = p.Take(C * kLdPair);
    slab = p.Take(int64_t(dk) * kLdSlab);
    g = p.Take(C);
    beta = p.Take(C);
    egamma = p.Take(C);
    dbeta = p.Take(C);
    floats = p.floats;
  }
};

// Per (chunk, value head): the backward through Delta = U - W S (dW = -dDelta S^T, dU = dDelta),
// W = T diag(beta e^gamma) K, U = T diag(beta) V and T = (I + L)^-1 (kernels.md §2.4; CPU
// ChunkBackwardWy), then dg from all decay-factor gradients. Writes dv, dbeta, dg and the final
// dk_head (adding to BwdOutputKernel's part).
__global__ void __launch_bounds__(kThreads)
    BwdWyKernel(Shape sh, GdnPackedInputs in, Workspace ws, GdnPackedGrads grads) {
  ChunkRef ch;
  if (!FindChunk(in.cu_seqlens, sh.num_seqs, blockIdx.x, ch)) return;
  const int h = blockIdx.y, kh = h / sh.group, dk = sh.dk, dv = sh.dv, lk = Ld(dk), lv = Ld(dv);
  const int64_t base = int64_t(blockIdx.x) * sh.hv + h;
  extern __shared__ float smem[];
  const BwdWySmem at(dk, dv);
  const WyArrays a{smem + at.dd,   smem + at.k,    smem + at.v,      smem + at.dw,
                   smem + at.tinv, smem + at.decay, smem + at.m,     smem + at.pair,
                   smem + at.beta, smem + at.egamma, smem + at.dbeta, dk, dv, lk, lv};
  float* slab = smem + at.slab;  // [d_k, kLdSlab]
  float* g = smem + at.g;

  LoadTile(a.dd, lv, C, dv, C, [&](int r, int c) { return ws.ddelta[(base * C + r) * dv + c]; });
  LoadTile(a.ks, lk, C, dk, ch.rows,
           [&](int r, int c) { return in.k[sh.Qk(ch.t0 + r, kh) + c]; });
  LoadTile(a.vs, lv, C, dv, ch.rows, [&](int r, int c) { return in.v[sh.V(ch.t0 + r, h) + c]; });
  LoadTile(a.tinv, kLdC, C, C, C, [&](int r, int i) { return ws.tinv[(base * C + r) * C + i]; });
  LoadTile(a.pair, kLdPair, C, C + 1, C,
           [&](int r, int i) { return ws.pair[(base * C + r) * (C + 1) + i]; });
  LoadGates(sh, in, ch, h, g, a.beta);
  __syncthreads();
  DecayFactors(g, a.decay, a.egamma);

  // dW = -dDelta S^T, S streamed by value columns.
  ChunkTile t;
  t.Zero();
  const float* state = ws.states + base * dk * dv;
  for (int v0 = 0; v0 < dv; v0 += kSlab) {
    const int n = min(kSlab, dv - v0);
    LoadTile(slab, kLdSlab, dk, n, dk, [&](int r, int c) { return state[r * dv + v0 + c]; });
    __syncthreads();
    t.Mma(C, dk, n, [&](int r, int c) { return a.dd[r * lv + v0 + c]; },
          [&](int c, int k) { return slab[k * kLdSlab + c]; });
    __syncthreads();
  }
  t.ForEach(C, dk, [&](int r, int k, float x) { a.dw[r * lk + k] = -x; });
  __syncthreads();

  // dKt = T^T dW, dVt = T^T dU: dk += diag(beta e^gamma) dKt, dv = diag(beta) dVt,
  // dbeta = e^gamma (dKt . k) + dVt . v, Pair(r, -1) += beta e^gamma (dKt . k).
  ChunkTile dk_acc;
  dk_acc.Zero();
  dk_acc.Mma(C, dk, C, [&](int i, int r) { return a.tinv[r * kLdC + i]; },
             [&](int r, int k) { return a.dw[r * lk + k]; });
  float xk[4], xv[4];
  dk_acc.RowSums(dk, [&](int i, int k, float x) { return x * a.ks[i * lk + k]; }, xk);
  dk_acc.ForEach(C, dk, [&](int i, int, float& x) { x *= a.beta[i] * a.egamma[i]; });
  ChunkTile dvt;
  dvt.Zero();
  dvt.Mma(C, dv, C, [&](int i, int r) { return a.tinv[r * kLdC + i]; },
          [&](int r, int c) { return a.dd[r * lv + c]; });
  dvt.RowSums(dv, [&](int i, int c, float x) { return x * a.vs[i * lv + c]; }, xv);
  dvt.ForEach(ch.rows, dv, [&](int i, int c, float x) {
    grads.dv[sh.V(ch.t0 + i, h) + c] = a.beta[i] * x;
  });
  if (RowLeader()) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ChunkTile::Row(i);
      a.dbeta[r] = a.egamma[r] * xk[i] + xv[i];
      a.pair[r * kLdPair] += a.beta[r] * a.egamma[r] * xk[i];
    }
  }

  WyThroughInverse(a);
  dk_acc.Mma(C, dk, C, [&](int r, int i) { return a.m[r * kLdC + i]; },
             [&](int i, int k) { return a.ks[i * lk + k]; });
  dk_acc.Mma(C, dk, C, [&](int i, int r) { return a.m[r * kLdC + i]; },
             [&](int r, int k) { return a.ks[r * lk + k]; });
  dk_acc.ForEach(ch.rows, dk, [&](int i, int k, float x) {
    float* out = ws.dk_head + sh.HeadQk(ch.t0 + i, h) + k;
    *out = *out + x;
  });

  const float dg = DecayGradsToDg(a.pair, ch.rows);
  if (int(threadIdx.x) < ch.rows) {
    grads.dg[sh.Gate(ch.t0 + threadIdx.x, h)] = dg;
    grads.dbeta[sh.Gate(ch.t0 + threadIdx.x, h)] = a.dbeta[threadIdx.x];
  }
}

// dq[t][kh] = sum over the value heads h of key head kh (ascending) of dq_head[t][h]; same for dk.
__global__ void SumKeyHeadsKernel(int64_t n, int hk, int group, int d_k, const float* dq_head,
                                  const float* dk_head, float* dq, float* dk) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / d_k, t = row / hk;
    const int kh = int(row % hk), c = int(idx % d_k);
    float sq = 0.f, sk = 0.f;
    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      const int64_t at = (t * hk * group + h) * d_k + c;
      sq += dq_head[at];
      sk += dk_head[at];
    }
    dq[idx] = sq;
    dk[idx] = sk;
  }
}

// ds0[i] = sum over sequences s (ascending) of dh0[s][i].
__global__ void SumSequencesKernel(int64_t n, int64_t num_seqs, const float* dh0, float* ds0) {
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n;
       idx += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t seq = 0; seq < num_seqs; ++seq) s += dh0[seq * n + idx];
    ds0[idx] = s;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

Shape MakeShape(const GdnPackedDims& d) {
  S0_CHECK(d.tokens >= 0 && d.tokens <= INT32_MAX && d.num_seqs >= 1);
  S0_CHECK(d.num_k_heads > 0 && d.num_v_heads > 0 && d.num_v_heads <= 65535);
  S0_CHECK_MSG(d.num_v_heads % d.num_k_heads == 0, "H_v must be a multiple of H_k");
  S0_CHECK_MSG(d.d_k > 0 && d.d_k <= kMaxHeadDim && d.d_v > 0 && d.d_v <= kMaxHeadDim,
               "the CUDA gated delta rule supports d_k, d_v <= 128");
  Shape sh;
  sh.num_seqs = d.num_seqs;
  sh.hk = int(d.num_k_heads);
  sh.hv = int(d.num_v_heads);
  sh.dk = int(d.d_k);
  sh.dv = int(d.d_v);
  sh.group = sh.hv / sh.hk;
  sh.scale = 1.0f / std::sqrt(float(d.d_k));
  return sh;
}

void CheckInputs(const GdnPackedInputs& in) {
  S0_CHECK(in.cu_seqlens && in.q && in.k && in.v && in.g && in.beta);
  S0_CHECK_MSG(in.s0, "the CUDA gated delta rule needs S0");
}

// tile::Launch, naming this file's kernels in its errors.
template <typename... Args>
void Launch(Args... args) {
  tile::Launch("gated delta rule", args...);
}

dim3 ChunkGrid(const GdnPackedDims& d, const Shape& sh) {
  return dim3(unsigned(MaxChunks(d)), unsigned(sh.hv));
}
dim3 ScanGrid(const GdnPackedDims& d, const Shape& sh) {
  return dim3(unsigned(d.num_seqs), unsigned(sh.hv),
              unsigned((sh.dv + kStateCols - 1) / kStateCols));
}
// Grid-stride elementwise kernels: enough blocks to fill the device, at most one per element.
dim3 ElementwiseGrid(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return dim3(unsigned(blocks < 4096 ? blocks : 4096));
}

}  // namespace

size_t GdnForwardWorkspaceBytes(const GdnPackedDims& dims) {
  MakeShape(dims);
  Workspace ws;
  return Carve(dims, false, nullptr, ws);
}

size_t GdnBackwardWorkspaceBytes(const GdnPackedDims& dims) {
  MakeShape(dims);
  Workspace ws;
  return Carve(dims, true, nullptr, ws);
}

void GatedDeltaRuleCudaForward(const GdnPackedDims& dims, const GdnPackedInputs& in, float* o,
                               void* workspace, cudaStream_t stream, bool keep_for_backward) {
  const Shape sh = MakeShape(dims);
  CheckInputs(in);
  S0_CHECK(o && workspace);
  Workspace ws;
  // Kept: the backward's layout, whose first arrays are the forward's, plus T (PrepareKernel
  // writes it when the workspace has it).
  Carve(dims, keep_for_backward, static_cast<char*>(workspace), ws);
  const dim3 chunks = ChunkGrid(dims, sh), scan = ScanGrid(dims, sh);
  Launch(PrepareKernel, chunks, PrepareSmem(sh.dk, sh.dv).floats, stream, sh, in, ws);
  Launch(StateForwardKernel, scan, StateForwardSmem(sh.dk).floats, stream, sh, in, ws);
  Launch(OutputKernel, chunks, OutputSmem(sh.dk, sh.dv).floats, stream, sh, in, ws, o);
}

void GatedDeltaRuleCudaBackward(const GdnPackedDims& dims, const GdnPackedInputs& in,
                                const float* dout, const GdnPackedGrads& grads, void* workspace,
                                cudaStream_t stream, bool forward_kept) {
  const Shape sh = MakeShape(dims);
  CheckInputs(in);
  S0_CHECK(dout && grads.ds0 && workspace);
  const bool input_grads = grads.dq != nullptr;
  S0_CHECK_MSG((grads.dk != nullptr) == input_grads && (grads.dv != nullptr) == input_grads &&
                   (grads.dg != nullptr) == input_grads &&
                   (grads.dbeta != nullptr) == input_grads,
               "dq, dk, dv, dg and dbeta are all set or all null");
  Workspace ws;
  Carve(dims, true, static_cast<char*>(workspace), ws);
  if (!input_grads) ws.tinv = ws.dstates = nullptr;  // only dS0: no WY backward, no dH tape
  const dim3 chunks = ChunkGrid(dims, sh), scan = ScanGrid(dims, sh);
  // The forward's W, Delta (over U), A, decay factors, T and chunk-start states: kept by the
  // forward call, or recomputed. (The dS0-only kernels read neither U nor Delta, so a kept
  // workspace, where U has become Delta, serves them as well.)
  if (!forward_kept) {
    Launch(PrepareKernel, chunks, PrepareSmem(sh.dk, sh.dv).floats, stream, sh, in, ws);
    if (input_grads) {
      Launch(StateForwardKernel, scan, StateForwardSmem(sh.dk).floats, stream, sh, in, ws);
    }
  }
  Launch(DDeltaLocalKernel, chunks, DDeltaLocalSmem(sh.dv).floats, stream, sh, in, dout, ws);
  Launch(StateBackwardKernel, scan, StateBackwardSmem(sh.dk).floats, stream, sh, in, dout, ws);
  if (input_grads) {
    Launch(BwdOutputKernel, chunks, BwdOutputSmem(sh.dk, sh.dv).floats, stream, sh, in, dout, ws);
    Launch(BwdWyKernel, chunks, BwdWySmem(sh.dk, sh.dv).floats, stream, sh, in, ws, grads);
    const int64_t n = dims.tokens * dims.num_k_heads * dims.d_k;
    Launch(SumKeyHeadsKernel, ElementwiseGrid(n), 0, stream, n, sh.hk, sh.group, sh.dk,
           static_cast<const float*>(ws.dq_head), static_cast<const float*>(ws.dk_head),
           grads.dq, grads.dk);
  }
  const int64_t n = int64_t(sh.hv) * sh.dk * sh.dv;
  Launch(SumSequencesKernel, ElementwiseGrid(n), 0, stream, n, dims.num_seqs,
         static_cast<const float*>(ws.dh0), grads.ds0);
}

}  // namespace s0
