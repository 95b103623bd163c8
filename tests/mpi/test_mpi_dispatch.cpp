// Owns the exact-dispatch test under mpirun: payloads encode (source rank, token, expert, slot); every kept pair reaches its expert's rank in order and returns in place.
#include <gtest/gtest.h>

#include "mpi_gtest_main.h"

#include <algorithm>
#include <random>
#include <tuple>
#include <vector>

#include "moe/ep_exchange.h"
#include "moe/plan.h"
#include "train/runtime.h"

using namespace moe;

static Runtime* g_rt = nullptr;

// The routing of source rank `src`: uneven token counts, random distinct top-k, random probs (some ties).
static RoutingPlan plan_of(int src, i64 E, i64 K, double cf, DropPolicy policy, std::vector<float>& probs) {
  const i64 T = 9 + 5 * src;
  std::mt19937 rng(1000 + src);
  RoutingPlan p(T, E, K);
  probs.assign(size_t(T * E), 0.f);
  for (auto& v : probs) v = float(rng() % 7) / 7.f;  // coarse values → ties on purpose
  for (i64 t = 0; t < T; ++t) {
    std::vector<int> ex(E);
    for (i64 e = 0; e < E; ++e) ex[e] = int(e);
    std::shuffle(ex.begin(), ex.end(), rng);
    for (i64 k = 0; k < K; ++k) p.topk_idx[t * K + k] = ex[k];
  }
  build_plan<float>(p, probs.data(), cf, policy);
  return p;
}

static void check_dispatch(double cf, DropPolicy policy) {
  Communicator& comm = *g_rt->world;
  const int R = comm.size(), me = comm.rank();
  const i64 E_local = 3, E = E_local * R, K = 2, W = 4;
  std::vector<float> probs;
  const RoutingPlan mine = plan_of(me, E, K, cf, policy, probs);
  // Payload row = (source rank, token, expert, slot) of the pair it carries.
  std::vector<float> send(size_t(mine.P * W));
  for (i64 r = 0; r < mine.P; ++r) {
    const i64 pair = mine.row_pair[r];
    const float row[4] = {float(me), float(pair / K), float(mine.topk_idx[pair]), float(pair % K)};
    std::copy(row, row + 4, send.begin() + r * W);
  }
  EpExchange<float> ex(&comm, E, E_local, R * 64 * K, W);
  ex.plan(mine.counts);
  std::vector<float> recv(size_t(ex.recv_rows() * W));
  ex.to_experts(recv.data(), send.data(), W);

  // Expected arrivals, recomputed from every source's plan: source rank, then local expert, then token order.
  std::vector<std::tuple<int, int, int, int>> want;
  for (int s = 0; s < R; ++s) {
    std::vector<float> pr;
    const RoutingPlan p = plan_of(s, E, K, cf, policy, pr);
    for (i64 j = 0; j < E_local; ++j) {
      const i64 e = me * E_local + j;
      for (i64 r = p.offsets[e]; r < p.offsets[e + 1]; ++r) {
        const i64 pair = p.row_pair[r];
        want.emplace_back(s, int(pair / K), int(e), int(pair % K));
      }
    }
  }
  ASSERT_EQ(i64(want.size()), ex.recv_rows()) << "rank " << me;
  for (size_t i = 0; i < want.size(); ++i) {
    const auto got = std::make_tuple(int(recv[i * W]), int(recv[i * W + 1]), int(recv[i * W + 2]), int(recv[i * W + 3]));
    ASSERT_EQ(got, want[i]) << "rank " << me << " row " << i;
  }
  i64 sum = 0;
  for (i64 c : ex.local_counts()) sum += c;
  EXPECT_EQ(sum, ex.recv_rows());
  // The row blocks list every (expert, source) block expert-major and point at rows of that expert.
  ASSERT_EQ(ex.row_blocks().size(), size_t(E_local * R));
  for (size_t b = 0; b < ex.row_blocks().size(); ++b) {
    const RowBlock& blk = ex.row_blocks()[b];
    EXPECT_EQ(blk.expert, i64(b) / R);
    for (i64 r = blk.row; r < blk.row + blk.rows; ++r) {
      EXPECT_EQ(int(recv[r * W + 2]), int(me * E_local + blk.expert));
      EXPECT_EQ(int(recv[r * W]), int(b % R));  // source rank
    }
  }

  // Return trip: the experts transform rows (x → 2x + 1); each comes back to its own slot on its source.
  for (float& v : recv) v = 2.f * v + 1.f;
  std::vector<float> back(size_t(mine.P * W));
  ex.from_experts(back.data(), recv.data(), W);
  for (size_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], 2.f * send[i] + 1.f) << "rank " << me << " elem " << i;
  if (cf > 0) {
    EXPECT_GT(mine.dropped, 0) << "capacity factor " << cf << " should drop pairs in this test";
  } else {
    EXPECT_EQ(mine.dropped, 0);
  }
}

TEST(Dispatch, C4_capacity_Dropless) { check_dispatch(0.0, DropPolicy::Probs); }
TEST(Dispatch, C4_capacity_ProbsPolicy) { check_dispatch(0.5, DropPolicy::Probs); }
TEST(Dispatch, C4_capacity_PositionPolicy) { check_dispatch(0.5, DropPolicy::Position); }

MOE_MPI_GTEST_MAIN(g_rt)
