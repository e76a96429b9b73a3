// CPU backend operations against straightforward double-precision references written from the
// equations (docs/architecture.md), on random inputs. Outputs are pre-filled with NaN so an
// unwritten element fails.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "ops/cpu/cpu_backend.h"

namespace fm {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<float> nans(size_t n) { return std::vector<float>(n, std::numeric_limits<float>::quiet_NaN()); }

void expect_close(const std::vector<float>& got, const std::vector<double>& want, double tol) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], tol * (1.0 + std::abs(want[i]))) << "at " << i;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

TEST(Ops, RmsNormAndGated) {
  CpuBackend be(2);
  const int rows = 5, dim = 37;
  auto x = randn(rows * dim, 1), z = randn(rows * dim, 2), w = randn(dim, 3);
  auto y = nans(x.size()), yg = nans(x.size());
  be.rms_norm(x.data(), w.data(), rows, dim, 1e-6f, y.data());
  be.rms_norm_gated(x.data(), z.data(), w.data(), rows, dim, 1e-6f, yg.data());
  std::vector<double> want(x.size()), want_g(x.size());
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i) ss += double(x[r * dim + i]) * x[r * dim + i];
    const double s = 1.0 / std::sqrt(ss / dim + 1e-6);
    for (int i = 0; i < dim; ++i) {
      want[r * dim + i] = x[r * dim + i] * s * w[i];
      want_g[r * dim + i] = want[r * dim + i] * silu(z[r * dim + i]);
    }
  }
  expect_close(y, want, 1e-5);
  expect_close(yg, want_g, 1e-5);
}

TEST(Ops, PartialRopeRotatesLeadingDimsOnly) {
  CpuBackend be(2);
  const int n = 3, heads = 2, hd = 16, rot = 8;
  auto x = randn(n * heads * hd, 4);
  auto y = x;
  const std::vector<int32_t> pos = {0, 7, 300};
  be.rope(y.data(), n, heads, pos.data(), RopeSpec{.head_dim = hd, .rotary_dim = rot, .theta = 1e7f});
  std::vector<double> want(x.size());
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < heads; ++h) {
      const float* v = x.data() + (t * heads + h) * hd;
      double* o = want.data() + (t * heads + h) * hd;
      for (int i = 0; i < hd; ++i) o[i] = v[i];
      for (int i = 0; i < rot / 2; ++i) {
        const double a = pos[t] * std::pow(1e7, -2.0 * i / rot);
        o[i] = v[i] * std::cos(a) - v[i + rot / 2] * std::sin(a);
        o[i + rot / 2] = v[i + rot / 2] * std::cos(a) + v[i] * std::sin(a);
      }
    }
  expect_close(y, want, 1e-4);
}

TEST(Ops, CausalGroupedAttention) {
  CpuBackend be(3);
  const int n = 3, past = 5, nh = 4, nkv = 2, hd = 8, total = past + n;
  auto q = randn(n * nh * hd, 5), k = randn(total * nkv * hd, 6), v = randn(total * nkv * hd, 7);
  auto out = nans(q.size());
  be.attention(q.data(), k.data(), v.data(), n, past, AttentionShape{.n_heads = nh, .n_kv_heads = nkv, .head_dim = hd},
               out.data());
  std::vector<double> want(q.size());
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nh; ++h) {
      const int kvh = h / (nh / nkv);
      std::vector<double> s(size_t(past + t + 1));
      double mx = -1e300, sum = 0;
      for (int j = 0; j <= past + t; ++j) {
        double d = 0;
        for (int i = 0; i < hd; ++i) d += double(q[(t * nh + h) * hd + i]) * k[(j * nkv + kvh) * hd + i];
        s[j] = d / std::sqrt(double(hd));
        mx = std::max(mx, s[j]);
      }
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int i = 0; i < hd; ++i) {
        double acc = 0;
        for (int j = 0; j <= past + t; ++j) acc += s[j] / sum * v[(j * nkv + kvh) * hd + i];
        want[(t * nh + h) * hd + i] = acc;
      }
    }
  expect_close(out, want, 1e-5);
}

TEST(Ops, Conv1dCarriesStateAcrossCalls) {
  CpuBackend be(2);
  const int n = 7, ch = 300, width = 4;
  auto x = randn(n * ch, 8), w = randn(ch * width, 9);
  std::vector<float> state_all((width - 1) * ch, 0.0f), state_steps = state_all;
  auto all = nans(x.size()), steps = nans(x.size());
  be.conv1d_silu(x.data(), w.data(), n, ch, width, state_all.data(), all.data());
  for (int t = 0; t < n; ++t)
    be.conv1d_silu(x.data() + t * ch, w.data(), 1, ch, width, state_steps.data(), steps.data() + t * ch);
  std::vector<double> want(x.size());
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < ch; ++c) {
      double acc = 0;
      for (int j = 0; j < width; ++j) {
        const int src = t - (width - 1) + j;
        if (src >= 0) acc += double(w[c * width + j]) * x[src * ch + c];
      }
      want[t * ch + c] = silu(acc);
    }
  expect_close(all, want, 1e-5);
  expect_close(steps, want, 1e-5);
  EXPECT_EQ(state_all, state_steps);
}

// The gated delta rule written out in double precision, head by head.
std::vector<double> delta_rule_reference(const std::vector<float>& qkv, const std::vector<float>& a,
                                         const std::vector<float>& b, const std::vector<float>& decay,
                                         const std::vector<float>& dt, int n, const DeltaNetShape& s) {
  const int dk = s.k_dim, dv = s.v_dim, nk = s.n_k_heads, nv = s.n_v_heads;
  const int conv_dim = 2 * nk * dk + nv * dv;
  std::vector<double> out(size_t(n) * nv * dv), S(size_t(nv) * dk * dv, 0.0);
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < nv; ++h) {
      const int kh = s.v_heads_tiled ? h % nk : h / (nv / nk);
      const float* row = qkv.data() + size_t(t) * conv_dim;
      std::vector<double> q(dk), k(dk);
      double qs = 0, ks = 0;
      for (int i = 0; i < dk; ++i) {
        q[i] = row[kh * dk + i];
        k[i] = row[nk * dk + kh * dk + i];
        qs += q[i] * q[i];
        ks += k[i] * k[i];
      }
      for (int i = 0; i < dk; ++i) {
        q[i] = q[i] / std::sqrt(qs + 1e-6) / std::sqrt(double(dk));
        k[i] = k[i] / std::sqrt(ks + 1e-6);
      }
      const double beta = 1.0 / (1.0 + std::exp(-b[t * nv + h]));
      const double g = decay[h] * std::log1p(std::exp(double(a[t * nv + h]) + dt[h]));
      double* Sh = S.data() + size_t(h) * dk * dv;
      for (int i = 0; i < dk * dv; ++i) Sh[i] *= std::exp(g);
      for (int j = 0; j < dv; ++j) {
        double m = 0;
        for (int i = 0; i < dk; ++i) m += Sh[i * dv + j] * k[i];
        const double delta = beta * (row[2 * nk * dk + h * dv + j] - m);
        for (int i = 0; i < dk; ++i) Sh[i * dv + j] += k[i] * delta;
      }
      for (int j = 0; j < dv; ++j) {
        double o = 0;
        for (int i = 0; i < dk; ++i) o += Sh[i * dv + j] * q[i];
        out[(size_t(t) * nv + h) * dv + j] = o;
      }
    }
  return out;
}

TEST(Ops, GatedDeltaRuleGroupedAndTiled) {
  CpuBackend be(2);
  for (bool tiled : {false, true}) {
    const DeltaNetShape s{.n_k_heads = 2, .n_v_heads = 6, .k_dim = 16, .v_dim = 12, .v_heads_tiled = tiled};
    const int n = 9, conv_dim = 2 * 2 * 16 + 6 * 12;
    auto qkv = randn(n * conv_dim, 10), a = randn(n * 6, 11), b = randn(n * 6, 12);
    auto dt = randn(6, 13, 0.5f), decay = randn(6, 14);
    for (float& d : decay) d = -std::exp(d);
    std::vector<float> state(6 * 16 * 12, 0.0f), state2 = state;
    auto out = nans(size_t(n) * 6 * 12), out2 = nans(out.size());
    be.gated_delta_rule(qkv.data(), a.data(), b.data(), decay.data(), dt.data(), n, s, state.data(), out.data());
    expect_close(out, delta_rule_reference(qkv, a, b, decay, dt, n, s), 1e-4);
    // Token by token from the carried state gives the same.
    for (int t = 0; t < n; ++t)
      be.gated_delta_rule(qkv.data() + t * conv_dim, a.data() + t * 6, b.data() + t * 6, decay.data(), dt.data(), 1, s,
                          state2.data(), out2.data() + t * 6 * 12);
    EXPECT_EQ(out, out2);
  }
}

TEST(Ops, SiluMul) {
  CpuBackend be(2);
  auto g = randn(10001, 15), u = randn(10001, 16);
  auto y = nans(g.size());
  be.silu_mul(g.data(), u.data(), int64_t(g.size()), y.data());
  std::vector<double> want(g.size());
  for (size_t i = 0; i < g.size(); ++i) want[i] = silu(g[i]) * u[i];
  expect_close(y, want, 1e-5);
}

}  // namespace
}  // namespace fm
