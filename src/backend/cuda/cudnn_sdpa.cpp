// Owns the cuDNN fused attention path (CudnnSdpa): the one file that includes cuDNN (the header-only cuDNN frontend
// over cudnn.h). libcudnn.so.9 is loaded at run time (the frontend's dynamic loading), never linked: a machine
// without it runs the hand-written kernels. Without MOE_HAVE_CUDNN (no frontend headers at configure time) every
// shape takes the hand kernel.
#include "backend/cuda/cudnn_sdpa.h"

#include <cuda_runtime.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/cuda_context.h"
#include "core/error.h"

#ifdef MOE_HAVE_CUDNN
#include <cudnn_frontend.h>
#include <dlfcn.h>

// The frontend's handle of libcudnn.so.9 (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING): every cuDNN call goes through it.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}
#endif

namespace moe {

namespace {

std::string shape_text(const SdpaShape& s) {
  return "B " + std::to_string(s.B) + ", L " + std::to_string(s.L) + ", NH " + std::to_string(s.NH) + ", NKV " +
         std::to_string(s.NKV) + ", D " + std::to_string(s.D) + ", window " + std::to_string(s.window);
}

}  // namespace

#ifdef MOE_HAVE_CUDNN

namespace fe = cudnn_frontend;

namespace {

// Tensor uids of the two graphs (the variant packs bind pointers by uid).
enum : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

// Loads libcudnn.so.9 once per process and hands it to the frontend: $MOE_CUDNN_LIBRARY (a path) first, then the
// loader's search (LD_LIBRARY_PATH, ld.so.cache), then the library CMake found. Returns "" or why it could not.
const std::string& load_cudnn() {
  static const std::string why = [] {
    // The frontend loads a CUDA runtime of its own for a few calls and would take libcudart.so.12 first where both
    // majors exist: name ours (unless the user did).
    const std::string cudart = "libcudart.so." + std::to_string(CUDART_VERSION / 1000);
    setenv("CUDNN_FRONTEND_CUDART_LIB_NAME", cudart.c_str(), 0);
    std::vector<std::string> cands;
    if (const char* e = std::getenv("MOE_CUDNN_LIBRARY"); e && *e) cands.emplace_back(e);
    cands.emplace_back("libcudnn.so.9");
#ifdef MOE_CUDNN_LIBRARY_HINT
    cands.emplace_back(MOE_CUDNN_LIBRARY_HINT);
#endif
    std::string errs;
    for (const std::string& c : cands) {
      dlerror();
      if (void* h = dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL)) {
        fe::cudnn_dlhandle = h;
        // Under dynamic loading a symbol the library lacks is a std::runtime_error, and the frontend caches each
        // symbol once per process (a null one stays null): a wrong library is final, never retried.
        int64_t ver = 0;
        try {
          ver = fe::detail::get_backend_version();
        } catch (const std::exception& ex) {
          return c + " is not a usable cuDNN library (" + ex.what() + ")";
        }
        if (ver >= 90000) return std::string();
        return "cuDNN " + std::to_string(ver) + " at " + c + " is older than 9.0";
      }
      const char* e = dlerror();
      errs += (errs.empty() ? "" : "; ") + std::string(e ? e : c.c_str());
    }
    return "libcudnn.so.9 could not be loaded (" + errs + "); set MOE_CUDNN_LIBRARY to its path";
  }();
  return why;
}

std::string version_text() {
  const int64_t v = fe::detail::get_backend_version();  // e.g. 91900
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." + std::to_string(v % 100);
}

std::vector<int64_t> vec(const std::array<i64, 4>& a) { return {a[0], a[1], a[2], a[3]}; }

using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

TensorPtr input(fe::graph::Graph& g, const char* name, int64_t uid, const SdpaView& v, fe::DataType_t t) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim(vec(v.dim))
                      .set_stride(vec(v.stride))
                      .set_data_type(t));
}
void output(const TensorPtr& t, int64_t uid, const SdpaView& v, fe::DataType_t dt) {
  t->set_output(true).set_uid(uid).set_dim(vec(v.dim)).set_stride(vec(v.stride)).set_data_type(dt);
}

// sm: the GPU's compute capability ×10 (the frontend would otherwise query the current device itself).
std::shared_ptr<fe::graph::Graph> new_graph(int sm) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_sm_version(sm);
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

// Scale 1/√D as the CPU twin computes it (float of the double quotient).
float attn_scale(i64 D) { return float(1.0 / std::sqrt(double(D))); }

// Causal band (right bound 0, top-left: query i sees keys j ≤ i) plus the sliding-window left bound (sdpa_plan.h).
template <typename Attr>
void set_mask(Attr& a, const SdpaShape& s) {
  a.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  if (const i64 lb = sdpa_left_bound(s.window, s.L)) a.set_diagonal_band_left_bound(int(lb));
}

// "" when built; else cuDNN's reason.
std::string build(fe::graph::Graph& g, cudnnHandle_t h, int64_t& ws) {
  auto st = g.build(h, {fe::HeurMode_t::A});
  if (!st.is_good()) return st.get_message().empty() ? "cuDNN rejected the graph" : st.get_message();
  st = g.get_workspace_size(ws);
  if (!st.is_good()) return "workspace size query: " + st.get_message();
  return std::string();
}

// out [B·L, NH·D], Stats = lse [B, NH, L] fp32 from q, k, v.
std::string build_forward(const SdpaShape& s, int sm, cudnnHandle_t h, std::shared_ptr<fe::graph::Graph>& out,
                          int64_t& ws) {
  auto g = new_graph(sm);
  const SdpaView vq = sdpa_view_rows(s.B, s.L, s.NH, s.D), vk = sdpa_view_rows(s.B, s.L, s.NKV, s.D),
                 vl = sdpa_view_lse(s.B, s.L, s.NH);
  auto Q = input(*g, "Q", kQ, vq, fe::DataType_t::BFLOAT16);
  auto K = input(*g, "K", kK, vk, fe::DataType_t::BFLOAT16);
  auto V = input(*g, "V", kV, vk, fe::DataType_t::BFLOAT16);
  auto opt = fe::graph::SDPA_attributes().set_name("moe_sdpa_fwd").set_generate_stats(true).set_attn_scale(
      attn_scale(s.D));
  set_mask(opt, s);
  auto [O, Stats] = g->sdpa(Q, K, V, opt);
  output(O, kO, vq, fe::DataType_t::BFLOAT16);
  output(Stats, kStats, vl, fe::DataType_t::FLOAT);
  std::string why = build(*g, h, ws);
  if (why.empty()) out = g;
  return why;
}

// dq, dk, dv (dk/dv summed over a kv head's query heads) from dout, out, lse, q, k, v; deterministic algorithm.
std::string build_backward(const SdpaShape& s, int sm, cudnnHandle_t h, std::shared_ptr<fe::graph::Graph>& out,
                           int64_t& ws) {
  auto g = new_graph(sm);
  const SdpaView vq = sdpa_view_rows(s.B, s.L, s.NH, s.D), vk = sdpa_view_rows(s.B, s.L, s.NKV, s.D),
                 vl = sdpa_view_lse(s.B, s.L, s.NH);
  auto Q = input(*g, "Q", kQ, vq, fe::DataType_t::BFLOAT16);
  auto K = input(*g, "K", kK, vk, fe::DataType_t::BFLOAT16);
  auto V = input(*g, "V", kV, vk, fe::DataType_t::BFLOAT16);
  auto O = input(*g, "O", kO, vq, fe::DataType_t::BFLOAT16);
  auto dO = input(*g, "dO", kDO, vq, fe::DataType_t::BFLOAT16);
  auto Stats = input(*g, "Stats", kStats, vl, fe::DataType_t::FLOAT);
  auto opt = fe::graph::SDPA_backward_attributes()
                 .set_name("moe_sdpa_bwd")
                 .set_attn_scale(attn_scale(s.D))
                 .set_deterministic_algorithm(true);  // two runs give the same bits (DESIGN: determinism)
  // Unverified on a GPU (read from the frontend 1.x headers): on sm90 the deterministic backward takes cuDNN's
  // dP-workspace engine, whose workspace grows as B·NH·⌈L/64⌉64·⌈L/128⌉128·2 bytes (1 GiB for NH 32, L 4096, B 1),
  // not linearly in L; the frontend's linear-workspace ordered-dQ route needs cuDNN 9.25+ and
  // CUDNN_FRONTEND_ATTN_DP_WORKSPACE_LIMIT. That workspace lands in the activation arena (attention_workspace_bytes),
  // which the dry-run memory plan sizes with the CPU table: the first GPU run must compare the logged workspace with
  // the plan's headroom.
  set_mask(opt, s);
  auto [dQ, dK, dV] = g->sdpa_backward(Q, K, V, O, dO, Stats, opt);
  output(dQ, kDQ, vq, fe::DataType_t::BFLOAT16);
  output(dK, kDK, vk, fe::DataType_t::BFLOAT16);
  output(dV, kDV, vk, fe::DataType_t::BFLOAT16);
  std::string why = build(*g, h, ws);
  if (why.empty()) out = g;
  return why;
}

}  // namespace

struct CudnnSdpa::Impl {
  struct Entry {
    Plan plan;
    std::shared_ptr<fe::graph::Graph> fwd, bwd;
    std::unordered_map<int64_t, void*> fwd_pack, bwd_pack;  // filled once, pointers overwritten per call
  };
  CudaContext& ctx;
  cudnnHandle_t handle = nullptr;
  std::string handle_why;  // why no handle could be made ("" = fine or not tried)
  std::map<SdpaShape, Entry> cache;
  bool warned_align = false;

  explicit Impl(CudaContext& c) : ctx(c) {}
  ~Impl() {
    cache.clear();  // graphs (and their plans) before the handle
    if (handle) fe::detail::destroy_handle(handle);
  }
  // A handle on the backend's stream, made on first need. "" or why not.
  std::string ensure_handle() {
    if (handle || !handle_why.empty()) return handle_why;
    MT_CUDA(cudaSetDevice(ctx.device));  // the handle and the graphs' plans belong to the backend's GPU
    try {  // dynamic loading: a symbol the library lacks throws (see load_cudnn)
      cudnnStatus_t st = fe::detail::create_handle(&handle);
      if (st != CUDNN_STATUS_SUCCESS) {
        handle = nullptr;
        handle_why = std::string("cudnnCreate failed: ") + fe::detail::get_error_string(st);
      } else if ((st = fe::detail::set_stream(handle, ctx.stream)) != CUDNN_STATUS_SUCCESS) {
        handle_why = std::string("cudnnSetStream failed: ") + fe::detail::get_error_string(st);
      }
    } catch (const std::exception& ex) {
      handle_why = std::string("cuDNN handle: ") + ex.what();
    }
    if (!handle_why.empty() && handle) {
      fe::detail::destroy_handle(handle);  // a handle not on our stream would queue on the legacy stream
      handle = nullptr;
    }
    return handle_why;
  }
  bool aligned(std::initializer_list<const void*> ps, const char* what) {
    for (const void* p : ps)
      if (!sdpa_aligned(p)) {
        if (!warned_align)
          spdlog::warn("attention {}: a tensor pointer is not 16-byte aligned; this call runs the hand-written kernel",
                       what);
        warned_align = true;
        return false;
      }
    return true;
  }
};

bool CudnnSdpa::compiled() { return true; }

const CudnnSdpa::Plan& CudnnSdpa::prepare(const SdpaShape& s, SdpaElem e) {
  auto it = impl_->cache.find(s);
  if (it != impl_->cache.end()) return it->second.plan;
  Impl::Entry& en = impl_->cache[s];
  Plan& p = en.plan;
  std::string why_f, why_b;
  if (const char* r = sdpa_skip_reason(s, e, impl_->ctx.cc_major)) {
    why_f = r;
  } else if (cudnn_attention_setting() == AttentionPath::Kernels) {
    why_f = "MOE_CUDNN_ATTENTION=off";
  } else if (!load_cudnn().empty()) {
    why_f = load_cudnn();
  } else if (!impl_->ensure_handle().empty()) {
    why_f = impl_->handle_why;
  } else {
    int64_t ws_f = 0, ws_b = 0;
    const int sm = impl_->ctx.cc_major * 10 + impl_->ctx.cc_minor;
    try {
      why_f = build_forward(s, sm, impl_->handle, en.fwd, ws_f);
    } catch (const std::exception& ex) {
      why_f = ex.what();
    }
    try {
      why_b = build_backward(s, sm, impl_->handle, en.bwd, ws_b);
    } catch (const std::exception& ex) {
      why_b = ex.what();
    }
    p.fwd = why_f.empty() && en.fwd;
    p.bwd = why_b.empty() && en.bwd;
    p.ws_bytes = std::max(p.fwd ? ws_f : 0, p.bwd ? ws_b : 0);
  }
  if (!p.fwd && why_f.empty()) why_f = "not built";
  if (p.fwd && p.bwd) {
    spdlog::info("attention ({}): cuDNN {} fused SDPA, forward and deterministic backward; workspace {} KiB",
                 shape_text(s), version_text(), (p.ws_bytes + 1023) / 1024);
  } else if (p.fwd || p.bwd) {
    p.why = p.fwd ? "backward: " + why_b : "forward: " + why_f;
    spdlog::info("attention ({}): {} on cuDNN {} fused SDPA, {} on the hand-written CUDA kernel ({})", shape_text(s),
                 p.fwd ? "forward" : "backward", version_text(), p.fwd ? "backward" : "forward", p.why);
  } else {
    p.why = why_b.empty() || why_b == why_f ? why_f : "forward: " + why_f + "; backward: " + why_b;
    spdlog::info("attention ({}): hand-written CUDA kernel ({})", shape_text(s), p.why);
  }
  return p;
}

bool CudnnSdpa::forward(const SdpaShape& s, bf16* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                        void* ws) {
  auto it = impl_->cache.find(s);
  MT_CHECK(it != impl_->cache.end() && it->second.plan.fwd, "cuDNN attention forward for a shape not planned on it (",
           shape_text(s), ")");
  Impl::Entry& en = it->second;
  if (!impl_->aligned({out, lse, q, k, v}, "forward")) return false;
  MT_CHECK(ws || en.plan.ws_bytes == 0, "cuDNN attention forward: no workspace (attention_workspace_bytes)");
  auto& pk = en.fwd_pack;
  pk[kQ] = const_cast<bf16*>(q);
  pk[kK] = const_cast<bf16*>(k);
  pk[kV] = const_cast<bf16*>(v);
  pk[kO] = out;
  pk[kStats] = lse;
  auto st = en.fwd->execute(impl_->handle, pk, ws);
  MT_CHECK(st.is_good(), "cuDNN fused attention forward (", shape_text(s), ") failed: ", st.get_message());
  return true;
}

bool CudnnSdpa::backward(const SdpaShape& s, bf16* dq, bf16* dk, bf16* dv, const bf16* dout, const bf16* out,
                         const float* lse, const bf16* q, const bf16* k, const bf16* v, void* ws) {
  auto it = impl_->cache.find(s);
  MT_CHECK(it != impl_->cache.end() && it->second.plan.bwd,
           "cuDNN attention backward for a shape not planned on it (", shape_text(s), ")");
  Impl::Entry& en = it->second;
  if (!impl_->aligned({dq, dk, dv, dout, out, lse, q, k, v}, "backward")) return false;
  MT_CHECK(ws || en.plan.ws_bytes == 0, "cuDNN attention backward: no workspace (attention_workspace_bytes)");
  auto& pk = en.bwd_pack;
  pk[kQ] = const_cast<bf16*>(q);
  pk[kK] = const_cast<bf16*>(k);
  pk[kV] = const_cast<bf16*>(v);
  pk[kO] = const_cast<bf16*>(out);
  pk[kDO] = const_cast<bf16*>(dout);
  pk[kStats] = const_cast<float*>(lse);
  pk[kDQ] = dq;
  pk[kDK] = dk;
  pk[kDV] = dv;
  auto st = en.bwd->execute(impl_->handle, pk, ws);
  MT_CHECK(st.is_good(), "cuDNN fused attention backward (", shape_text(s), ") failed: ", st.get_message());
  return true;
}

#else  // !MOE_HAVE_CUDNN: every shape takes the hand kernel

struct CudnnSdpa::Impl {
  explicit Impl(CudaContext&) {}
  std::map<SdpaShape, Plan> cache;
};

bool CudnnSdpa::compiled() { return false; }

const CudnnSdpa::Plan& CudnnSdpa::prepare(const SdpaShape& s, SdpaElem e) {
  auto it = impl_->cache.find(s);
  if (it != impl_->cache.end()) return it->second;
  Plan& p = impl_->cache[s];
  p.why = "this build has no cuDNN frontend headers (launch/setup.sh fetches them; configure again)";
  spdlog::info("attention ({}): hand-written CUDA kernel ({})", shape_text(s), p.why);
  return p;
}

bool CudnnSdpa::forward(const SdpaShape&, bf16*, float*, const bf16*, const bf16*, const bf16*, void*) {
  return false;
}
bool CudnnSdpa::backward(const SdpaShape&, bf16*, bf16*, bf16*, const bf16*, const bf16*, const float*, const bf16*,
                         const bf16*, const bf16*, void*) {
  return false;
}

#endif

CudnnSdpa::CudnnSdpa(CudaContext& ctx) : impl_(std::make_unique<Impl>(ctx)) {}
CudnnSdpa::~CudnnSdpa() = default;

}  // namespace moe
