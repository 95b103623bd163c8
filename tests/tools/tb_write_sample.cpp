// Owns tb_write_sample, the writer side of the TensorBoard oracle (tests/oracle/test_tensorboard.py): a run that is
// resumed from step 3 writes a known set of events into the directory argv[1] through moe_tb.
//
// Run 1 (first file) logs steps 1..4, then "crashes"; the checkpoint was at step 3, so its steps 3 and 4 are lost
// and carry marked values (scalar + 100, loads + 1000). Run 2 (a second writer, second file) starts with
// session_start(3) and logs steps 3..5. At each logged step s:
//   scalar tag i of kScalarTags   value = 1.0 / s + 0.25 * i
//   router/layer<l>/expert_load   load[e] = (2 * s + 3 * e + 5 * l) % 7, l in {0, 1}, e in [0, 8)
// The oracle knows these formulas; it never reads them from here. Prints each file's path, one a line.
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/tensorboard/event_writer.h"

namespace {

const char* const kScalarTags[] = {"train/loss", "router/layer0/imbalance"};
constexpr int kLayers = 2;
constexpr int kExperts = 8;

enum class StepFate { Kept, Lost };  // Lost: written by run 1 after its last checkpoint

void log_step(moe::tb::TbEventWriter& w, int64_t step, StepFate fate) {
  const double scalar_mark = fate == StepFate::Lost ? 100.0 : 0.0;
  const int64_t load_mark = fate == StepFate::Lost ? 1000 : 0;
  for (int i = 0; i < 2; ++i) w.scalar(kScalarTags[i], step, 1.0 / double(step) + 0.25 * i + scalar_mark);
  for (int l = 0; l < kLayers; ++l) {
    std::vector<int64_t> load(kExperts);
    for (int e = 0; e < kExperts; ++e) load[e] = (2 * step + 3 * e + 5 * l) % 7 + load_mark;
    w.expert_load_histogram("router/layer" + std::to_string(l) + "/expert_load", step, load);
  }
  w.flush();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: tb_write_sample DIR\n");
    return 2;
  }
  try {
    {
      moe::tb::TbEventWriter run1(argv[1]);
      for (int64_t s = 1; s <= 4; ++s) log_step(run1, s, s >= 3 ? StepFate::Lost : StepFate::Kept);
      std::printf("%s\n", run1.path().c_str());
    }
    moe::tb::TbEventWriter run2(argv[1]);
    run2.session_start(3);
    for (int64_t s = 3; s <= 5; ++s) log_step(run2, s, StepFate::Kept);
    std::printf("%s\n", run2.path().c_str());
  } catch (const moe::Error& e) {
    std::fprintf(stderr, "tb_write_sample: %s\n", e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tb_write_sample: %s\n", e.what());
    return 1;
  }
  return 0;
}
