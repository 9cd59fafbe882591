// Mamba's selective scan on the CPU, a block of channels of one batch element at a time, its state in cache.
//
// The recurrence (per batch element b and channel d; n runs over the N state entries):
//
//     s_t[n] = exp(dt_t * A[n]) * s_{t-1}[n] + v_t * B_t[n]        (s_{-1} = h0[b, d])
//     y_t    = sum_n s_t[n] C_t[n]
//
// with dt, v: [batch, T, D], A: [D, N], B, C: [batch, T, N], h0: [batch, D, N].
// Channels go in blocks of 8 (the inner loops run over the block's channels, whose dt, v and y are
// contiguous), each block's N x 8 state staying in cache for all T steps, so the [batch, T, D, N]
// decays, inputs and states that the tensor version streams through memory are never built.
//
// The backward recomputes one block's states (T x N x 8 numbers) and runs the adjoint
// recurrence backwards in time; with G_t = dL/ds_t and g_t = dL/dy_t:
//
//     G_t      = a_{t+1} G_{t+1} + g_t C_t                  (G_{T-1} starts from dL/ds_{T-1})
//     dL/dC_t += g_t s_t          dL/dB_t += v_t G_t        dL/dv_t = sum_n G_t B_t
//     q_t      = G_t s_{t-1} a_t  dL/ddt_t = sum_n q_t A    dL/dA  += q_t dt_t
//     dL/dh0   = a_0 G_0
//
// Rows of one batch element share dL/dB and dL/dC, so threads split the batch, never the channels
// (a batch of one runs on one thread).
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <thread>
#include <vector>

namespace {

// Channels are processed in blocks of up to CB consecutive d, state laid out [n][c] (c the channel
// within the block): dt_t, v_t, y_t of a block are contiguous, and every inner loop runs over c.
constexpr int64_t CB = 8;

// One step for one channel block: cur[n][c] = a[n][c] * prev[n][c] + inc[c] * Bt[n] with the decay
// a[n][c] = exp(step[c] * Ab[n][c]) written to `a`. `cur` may be `prev` (an in-place update).
template <typename scalar_t>
inline void advance_block(const scalar_t* prev, scalar_t* cur, scalar_t* __restrict__ a, const scalar_t* __restrict__ Ab,
                          const scalar_t* __restrict__ Bt, const scalar_t* __restrict__ step,
                          const scalar_t* __restrict__ inc, int64_t N) {
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t Bn = Bt[n];
#pragma omp simd
    for (int64_t c = 0; c < CB; ++c) {
      const int64_t i = n * CB + c;
      a[i] = std::exp(step[c] * Ab[i]);
      cur[i] = a[i] * prev[i] + inc[c] * Bn;
    }
  }
}

// The block's inputs at one position: step[c] = dt[b, t, d0 + c], inc[c] = v[b, t, d0 + c] (zero past D)
template <typename scalar_t>
inline void load_block(const scalar_t* dt, const scalar_t* v, int64_t btd0, int64_t cb, scalar_t* step, scalar_t* inc) {
  for (int64_t c = 0; c < CB; ++c) {
    step[c] = c < cb ? dt[btd0 + c] : scalar_t(0);
    inc[c] = c < cb ? v[btd0 + c] : scalar_t(0);
  }
}

// Ab[n][c] = A[d0 + c, n] and the block's initial state from h0 (zeros past D)
template <typename scalar_t>
inline void start_block(const scalar_t* A, const scalar_t* h0, int64_t b, int64_t d0, int64_t cb, int64_t D, int64_t N,
                        scalar_t* Ab, scalar_t* s0) {
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < CB; ++c) {
      Ab[n * CB + c] = c < cb ? A[(d0 + c) * N + n] : scalar_t(0);
      s0[n * CB + c] = c < cb ? h0[(b * D + d0 + c) * N + n] : scalar_t(0);
    }
}

// Forward over rows [b0, b1) of the batch; with `states` non-null, s_t is also written to
// states[b, t, d, :] (a state cache), otherwise it lives only in a block buffer.
template <typename scalar_t>
void forward_rows(const scalar_t* dt, const scalar_t* A, const scalar_t* B, const scalar_t* C, const scalar_t* v,
                  const scalar_t* h0, scalar_t* y, scalar_t* last, scalar_t* states, int64_t b0, int64_t b1,
                  int64_t T, int64_t D, int64_t N) {
  std::vector<scalar_t> s_buf(N * CB), a_buf(N * CB), Ab_buf(N * CB);
  scalar_t* __restrict__ s = s_buf.data();
  scalar_t step[CB], inc[CB], acc[CB];
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d0 = 0; d0 < D; d0 += CB) {
      const int64_t cb = std::min(CB, D - d0);
      start_block(A, h0, b, d0, cb, D, N, Ab_buf.data(), s);
      for (int64_t t = 0; t < T; ++t) {
        const int64_t btd0 = (b * T + t) * D + d0;
        const scalar_t* __restrict__ Ct = C + (b * T + t) * N;
        load_block(dt, v, btd0, cb, step, inc);
        advance_block(s, s, a_buf.data(), Ab_buf.data(), B + (b * T + t) * N, step, inc, N);
        for (int64_t c = 0; c < CB; ++c) acc[c] = 0;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t Cn = Ct[n];
#pragma omp simd
          for (int64_t c = 0; c < CB; ++c) acc[c] += s[n * CB + c] * Cn;
        }
        for (int64_t c = 0; c < cb; ++c) y[btd0 + c] = acc[c];
        if (states) {
          for (int64_t c = 0; c < cb; ++c)
            for (int64_t n = 0; n < N; ++n) states[(btd0 + c) * N + n] = s[n * CB + c];
        }
      }
      for (int64_t c = 0; c < cb; ++c)
        for (int64_t n = 0; n < N; ++n) last[(b * D + d0 + c) * N + n] = s[n * CB + c];
    }
  }
}

template <typename scalar_t>
void backward_rows(const scalar_t* dt, const scalar_t* A, const scalar_t* B, const scalar_t* C, const scalar_t* v,
                   const scalar_t* h0, const scalar_t* gy, const scalar_t* glast, scalar_t* d_dt, scalar_t* d_A_rows,
                   scalar_t* d_B, scalar_t* d_C, scalar_t* d_v, scalar_t* d_h0, int64_t b0, int64_t b1, int64_t T,
                   int64_t D, int64_t N) {
  // block-major buffers of N * CB numbers per position: states[t + 1] = s_t, states[0] = h0;
  // decays[t + 1] = a_t, decays[T + 1] = 1 (no decay beyond the last position)
  const int64_t NB = N * CB;
  std::vector<scalar_t> states_buf((T + 1) * NB), decays_buf((T + 2) * NB), G_buf(NB), Ab_buf(NB), dA_buf(NB);
  scalar_t* __restrict__ states = states_buf.data();
  scalar_t* __restrict__ decays = decays_buf.data();
  scalar_t* __restrict__ G = G_buf.data();
  scalar_t* __restrict__ Ab = Ab_buf.data();
  scalar_t* __restrict__ dA = dA_buf.data();
  scalar_t step[CB], inc[CB], g[CB], dv[CB], ddt[CB];
  for (int64_t i = 0; i < NB; ++i) decays[(T + 1) * NB + i] = 1;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d0 = 0; d0 < D; d0 += CB) {
      const int64_t cb = std::min(CB, D - d0);
      start_block(A, h0, b, d0, cb, D, N, Ab, states);
      for (int64_t t = 0; t < T; ++t) {
        load_block(dt, v, (b * T + t) * D + d0, cb, step, inc);
        advance_block(states + t * NB, states + (t + 1) * NB, decays + (t + 1) * NB, Ab, B + (b * T + t) * N, step,
                      inc, N);
      }
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < CB; ++c) G[n * CB + c] = glast && c < cb ? glast[(b * D + d0 + c) * N + n] : 0;
      for (int64_t i = 0; i < NB; ++i) dA[i] = 0;
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t btd0 = (b * T + t) * D + d0;
        const int64_t btn = (b * T + t) * N;
        load_block(dt, v, btd0, cb, step, inc);
        for (int64_t c = 0; c < CB; ++c) {
          g[c] = c < cb ? gy[btd0 + c] : scalar_t(0);
          dv[c] = ddt[c] = 0;
        }
        const scalar_t* __restrict__ s_t = states + (t + 1) * NB;
        const scalar_t* __restrict__ s_prev = states + t * NB;
        const scalar_t* __restrict__ a = decays + (t + 1) * NB;
        const scalar_t* __restrict__ a_next = decays + (t + 2) * NB;
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t Bn = B[btn + n], Cn = C[btn + n];
          scalar_t dC = 0, dB = 0;
#pragma omp simd reduction(+ : dC, dB)
          for (int64_t c = 0; c < CB; ++c) {
            const int64_t i = n * CB + c;
            const scalar_t Gi = a_next[i] * G[i] + g[c] * Cn;
            G[i] = Gi;
            dC += g[c] * s_t[i];
            dB += inc[c] * Gi;
            dv[c] += Gi * Bn;
            const scalar_t q = Gi * s_prev[i] * a[i];
            ddt[c] += q * Ab[i];
            dA[i] += q * step[c];
          }
          d_C[btn + n] += dC;
          d_B[btn + n] += dB;
        }
        for (int64_t c = 0; c < cb; ++c) {
          d_v[btd0 + c] = dv[c];
          d_dt[btd0 + c] = ddt[c];
        }
      }
      for (int64_t c = 0; c < cb; ++c)
        for (int64_t n = 0; n < N; ++n) {
          const int64_t row = (b * D + d0 + c) * N + n;
          d_A_rows[row] = dA[n * CB + c];
          d_h0[row] = decays[NB + n * CB + c] * G[n * CB + c];
        }
    }
  }
}

// Runs fn(b0, b1) on contiguous slices of [0, batch) in PyTorch's intra-op thread count of std::threads
// (at::parallel_for would need OpenMP in this build; torch ships its own OpenMP runtime, so none is linked
// here). Small problems (generation's one position) stay on the calling thread.
template <typename Fn>
void split_batch(int64_t batch, int64_t work, const Fn& fn) {
  const int64_t wanted = work < (int64_t(1) << 18) ? 1 : std::min<int64_t>(at::get_num_threads(), batch);
  if (wanted <= 1) {
    fn(0, batch);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (batch + wanted - 1) / wanted;
  for (int64_t b0 = per; b0 < batch; b0 += per) pool.emplace_back(fn, b0, std::min(batch, b0 + per));
  fn(0, std::min(batch, per));
  for (auto& th : pool) th.join();
}

void check(const torch::Tensor& x, const char* name, int64_t dim) {
  TORCH_CHECK(x.device().is_cpu(), "selective_scan kernel: ", name, " must be on the CPU");
  TORCH_CHECK(x.is_contiguous(), "selective_scan kernel: ", name, " must be contiguous");
  TORCH_CHECK(x.dim() == dim, "selective_scan kernel: ", name, " must have ", dim, " dimensions");
}

void check_inputs(const torch::Tensor& dt, const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& C,
                  const torch::Tensor& v, const torch::Tensor& h0) {
  check(dt, "dt", 3); check(A, "A", 2); check(B, "B", 3); check(C, "C", 3); check(v, "v", 3); check(h0, "h0", 3);
}

}  // namespace

// (y [batch, T, D], last state [batch, D, N]) and, with keep_states, every state [batch, T, D, N]
std::vector<torch::Tensor> scan_forward(torch::Tensor dt, torch::Tensor A, torch::Tensor B, torch::Tensor C,
                                        torch::Tensor v, torch::Tensor h0, bool keep_states) {
  check_inputs(dt, A, B, C, v, h0);
  const int64_t batch = dt.size(0), T = dt.size(1), D = dt.size(2), N = A.size(1);
  auto y = torch::empty_like(dt);
  auto last = torch::empty_like(h0);
  auto states = keep_states ? torch::empty({batch, T, D, N}, dt.options()) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(dt.scalar_type(), "selective_scan_forward", [&] {
    const auto *pdt = dt.data_ptr<scalar_t>(), *pA = A.data_ptr<scalar_t>(), *pB = B.data_ptr<scalar_t>(),
               *pC = C.data_ptr<scalar_t>(), *pv = v.data_ptr<scalar_t>(), *ph0 = h0.data_ptr<scalar_t>();
    auto *py = y.data_ptr<scalar_t>(), *plast = last.data_ptr<scalar_t>();
    scalar_t* pstates = keep_states ? states.data_ptr<scalar_t>() : nullptr;
    split_batch(batch, batch * T * D * N, [&](int64_t b0, int64_t b1) {
      forward_rows<scalar_t>(pdt, pA, pB, pC, pv, ph0, py, plast, pstates, b0, b1, T, D, N);
    });
  });
  if (keep_states) return {y, last, states};
  return {y, last};
}

// (d_dt, d_A, d_B, d_C, d_v, d_h0); grad_last may be undefined (no gradient reached the last state)
std::vector<torch::Tensor> scan_backward(torch::Tensor dt, torch::Tensor A, torch::Tensor B, torch::Tensor C,
                                         torch::Tensor v, torch::Tensor h0, torch::Tensor grad_y,
                                         torch::Tensor grad_last) {
  check_inputs(dt, A, B, C, v, h0);
  check(grad_y, "grad_y", 3);
  const bool has_last = grad_last.defined();
  if (has_last) check(grad_last, "grad_last", 3);
  const int64_t batch = dt.size(0), T = dt.size(1), D = dt.size(2), N = A.size(1);
  auto d_dt = torch::empty_like(dt), d_v = torch::empty_like(v), d_h0 = torch::empty_like(h0);
  auto d_A_rows = torch::empty_like(h0);
  auto d_B = torch::zeros_like(B), d_C = torch::zeros_like(C);
  AT_DISPATCH_FLOATING_TYPES(dt.scalar_type(), "selective_scan_backward", [&] {
    const auto *pdt = dt.data_ptr<scalar_t>(), *pA = A.data_ptr<scalar_t>(), *pB = B.data_ptr<scalar_t>(),
               *pC = C.data_ptr<scalar_t>(), *pv = v.data_ptr<scalar_t>(), *ph0 = h0.data_ptr<scalar_t>(),
               *pgy = grad_y.data_ptr<scalar_t>();
    const scalar_t* pgl = has_last ? grad_last.data_ptr<scalar_t>() : nullptr;
    auto *pddt = d_dt.data_ptr<scalar_t>(), *pdA = d_A_rows.data_ptr<scalar_t>(), *pdB = d_B.data_ptr<scalar_t>(),
         *pdC = d_C.data_ptr<scalar_t>(), *pdv = d_v.data_ptr<scalar_t>(), *pdh0 = d_h0.data_ptr<scalar_t>();
    split_batch(batch, batch * T * D * N, [&](int64_t b0, int64_t b1) {
      backward_rows<scalar_t>(pdt, pA, pB, pC, pv, ph0, pgy, pgl, pddt, pdA, pdB, pdC, pdv, pdh0, b0, b1, T, D, N);
    });
  });
  return {d_dt, d_A_rows.sum(0), d_B, d_C, d_v, d_h0};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &scan_forward, "selective scan forward (CPU)");
  m.def("backward", &scan_backward, "selective scan backward (CPU)");
}
