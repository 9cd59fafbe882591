// Mamba's selective scan on the CPU, one (batch, channel) row at a time with its state in cache.
//
// The recurrence (per batch element b and channel d; n runs over the N state entries):
//
//     s_t[n] = exp(dt_t * A[n]) * s_{t-1}[n] + v_t * B_t[n]        (s_{-1} = h0[b, d])
//     y_t    = sum_n s_t[n] C_t[n]
//
// with dt, v: [batch, T, D], A: [D, N], B, C: [batch, T, N], h0: [batch, D, N].
// Each row's N state entries stay in registers for all T steps, so the [batch, T, D, N] decays,
// inputs and states that the tensor version streams through memory are never built.
//
// The backward recomputes one row's states (T x N numbers, a few kB) and runs the adjoint
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

// One step of the recurrence for one row: cur[n] = a[n] * prev[n] + inc * Bt[n] with the decay
// a[n] = exp(step * Ad[n]) written to `a`. `cur` may be `prev` (an in-place update).
template <typename scalar_t>
inline void advance_row(const scalar_t* prev, scalar_t* cur, scalar_t* __restrict__ a, const scalar_t* __restrict__ Ad,
                        const scalar_t* __restrict__ Bt, scalar_t step, scalar_t inc, int64_t N) {
#pragma omp simd
  for (int64_t n = 0; n < N; ++n) {
    a[n] = std::exp(step * Ad[n]);
    cur[n] = a[n] * prev[n] + inc * Bt[n];
  }
}

// Forward over rows [b0, b1) of the batch; with `states` non-null, s_t is also written to
// states[b, t, d, :] (a state cache), otherwise it lives only in a row buffer.
template <typename scalar_t>
void forward_rows(const scalar_t* dt, const scalar_t* A, const scalar_t* B, const scalar_t* C, const scalar_t* v,
                  const scalar_t* h0, scalar_t* y, scalar_t* last, scalar_t* states, int64_t b0, int64_t b1,
                  int64_t T, int64_t D, int64_t N) {
  std::vector<scalar_t> row(N), decay(N);
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      const scalar_t* __restrict__ Ad = A + d * N;
      scalar_t* __restrict__ s = row.data();
      for (int64_t n = 0; n < N; ++n) s[n] = h0[(b * D + d) * N + n];
      for (int64_t t = 0; t < T; ++t) {
        const int64_t btd = (b * T + t) * D + d;
        const scalar_t* __restrict__ Ct = C + (b * T + t) * N;
        advance_row(s, s, decay.data(), Ad, B + (b * T + t) * N, dt[btd], v[btd], N);
        scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t n = 0; n < N; ++n) acc += s[n] * Ct[n];
        y[btd] = acc;
        if (states) {
          scalar_t* __restrict__ out = states + btd * N;
          for (int64_t n = 0; n < N; ++n) out[n] = s[n];
        }
      }
      for (int64_t n = 0; n < N; ++n) last[(b * D + d) * N + n] = s[n];
    }
  }
}

template <typename scalar_t>
void backward_rows(const scalar_t* dt, const scalar_t* A, const scalar_t* B, const scalar_t* C, const scalar_t* v,
                   const scalar_t* h0, const scalar_t* gy, const scalar_t* glast, scalar_t* d_dt, scalar_t* d_A_rows,
                   scalar_t* d_B, scalar_t* d_C, scalar_t* d_v, scalar_t* d_h0, int64_t b0, int64_t b1, int64_t T,
                   int64_t D, int64_t N) {
  // states[(t + 1) * N + n] = s_t[n], states[n] = h0; decays[(t + 1) * N + n] = a_t[n], decays[T + 1] = 1
  std::vector<scalar_t> states_buf((T + 1) * N), decays_buf((T + 2) * N), G_buf(N);
  scalar_t* __restrict__ states = states_buf.data();
  scalar_t* __restrict__ decays = decays_buf.data();
  scalar_t* __restrict__ G = G_buf.data();
  for (int64_t n = 0; n < N; ++n) decays[(T + 1) * N + n] = 1;
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t d = 0; d < D; ++d) {
      const scalar_t* __restrict__ Ad = A + d * N;
      const int64_t row = (b * D + d) * N;
      for (int64_t n = 0; n < N; ++n) states[n] = h0[row + n];
      for (int64_t t = 0; t < T; ++t) {
        const int64_t btd = (b * T + t) * D + d;
        advance_row(states + t * N, states + (t + 1) * N, decays + (t + 1) * N, Ad, B + (b * T + t) * N, dt[btd],
                    v[btd], N);
      }
      for (int64_t n = 0; n < N; ++n) G[n] = glast ? glast[row + n] : scalar_t(0);
      scalar_t* __restrict__ dA = d_A_rows + row;
      for (int64_t n = 0; n < N; ++n) dA[n] = 0;
      for (int64_t t = T - 1; t >= 0; --t) {
        const int64_t btd = (b * T + t) * D + d;
        const int64_t btn = (b * T + t) * N;
        const scalar_t g = gy[btd], inc = v[btd], step = dt[btd];
        const scalar_t* __restrict__ s_t = states + (t + 1) * N;
        const scalar_t* __restrict__ s_prev = states + t * N;
        const scalar_t* __restrict__ a = decays + (t + 1) * N;
        const scalar_t* __restrict__ a_next = decays + (t + 2) * N;
        const scalar_t* __restrict__ Bt = B + btn;
        const scalar_t* __restrict__ Ct = C + btn;
        scalar_t* __restrict__ dBt = d_B + btn;
        scalar_t* __restrict__ dCt = d_C + btn;
        scalar_t dv = 0, ddt = 0;
#pragma omp simd reduction(+ : dv, ddt)
        for (int64_t n = 0; n < N; ++n) {
          const scalar_t Gn = a_next[n] * G[n] + g * Ct[n];
          G[n] = Gn;
          dCt[n] += g * s_t[n];
          dBt[n] += inc * Gn;
          dv += Gn * Bt[n];
          const scalar_t q = Gn * s_prev[n] * a[n];
          ddt += q * Ad[n];
          dA[n] += q * step;
        }
        d_v[btd] = dv;
        d_dt[btd] = ddt;
      }
      for (int64_t n = 0; n < N; ++n) d_h0[row + n] = decays[N + n] * G[n];
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
