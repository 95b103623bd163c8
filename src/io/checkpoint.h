// Owns the HDF5 checkpoint file (DESIGN §7): logical tensors by HF name, AdamW moments, /meta; the only place HDF5 is seen.
#pragma once
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "core/dims.h"

namespace moe {

// 2: /meta carries a checksum (format 1 files are still read, their /meta range-checked only).
constexpr int kCheckpointFormatVersion = 2;

struct CheckpointMeta {
  i64 step = 0;                // updates done
  i64 tokens_seen = 0;
  i64 data_position = 0;       // next global window index (step · B)
  std::string config_yaml;     // resolved config of the run that wrote it
  int world = 1, ep = 1, zero = 0;
  unsigned long long seed = 0; // Philox key; draws are indexed by (step, layer, micro-batch), so this is the RNG state
  int format_version = kCheckpointFormatVersion;
  std::vector<std::vector<float>> select_bias;  // [moe layer][E] aux-loss-free bias
};

// A logical tensor every rank declares identically (datasets are created collectively).
// checksum: [model, exp_avg, exp_avg_sq] piece_checksum of the whole tensor (summed over ranks before writing).
// Whether a tensor has AdamW moments in the file: trainable ones do (/optim/<name>/exp_avg, exp_avg_sq), frozen ones
// (LoRA/QLoRA: embeddings, norms, lm_head, a frozen router) are stored under /model only.
enum class Moments { Stored, None };

struct TensorDecl {
  std::string name;
  std::vector<i64> shape;
  uint64_t checksum[3] = {0, 0, 0};  // model, exp_avg, exp_avg_sq (the last two 0 with Moments::None)
  Moments moments = Moments::Stored;
};

// The part of a logical tensor one rank writes or reads: flat elements [begin, end) of `name` at data.
struct TensorPiece {
  std::string name;
  i64 begin = 0, end = 0;
  float* data = nullptr;
};

// Collective over `world` (parallel HDF5 through MPI-IO when world has MPI, else one process). Creates
// /model/<name>, /optim/<name>/exp_avg|exp_avg_sq (contiguous, each with a "checksum" attribute from
// tensors[i].checksum) and /meta (with its own checksum); writes the "complete" attribute last.
// Errors are Internal and name the file and the OS error ("No space left on device (errno 28)"); HDF5 prints
// nothing. Rank 0 first reserves the expected size (fallocate) and all ranks agree on the verdict, so a full
// disk usually stops every rank at once, before HDF5. A failure inside the write removes the temporary at
// `path` and raises on the failing rank only, without collective closes: with several ranks the caller must
// abort the world (fail_run does), its peers may be waiting in a collective. Test hook: MOE_FAULT_INJECT
// (io/fault_inject.h).
void write_checkpoint_file(const std::string& path, Communicator& world, const std::vector<TensorDecl>& tensors,
                           const std::vector<TensorPiece>& model, const std::vector<TensorPiece>& exp_avg,
                           const std::vector<TensorPiece>& exp_avg_sq, const CheckpointMeta& meta);

// Reads /meta (serially, any rank). BadInput naming the file when it is not a complete moe-train checkpoint,
// when a /meta value is out of range (step 0 .. 2^31-1, world >= 1, ep | world, zero 0..3, data_position and
// tokens_seen multiples of step and of each other, finite bias) or fails the /meta checksum (format 2), and
// for any HDF5 failure while reading.
CheckpointMeta read_checkpoint_meta(const std::string& path);

// Collective: fills every piece from the file (any writer layout: tensors are logical) with independent
// reads, and returns the stored checksums in tensors[i].checksum. Returns "" or the first problem (missing
// tensor, shape mismatch, unreadable data); every rank returns the same verdict, none hangs.
std::string read_checkpoint_tensors(const std::string& path, Communicator& world, std::vector<TensorDecl>& tensors,
                                    const std::vector<TensorPiece>& model, const std::vector<TensorPiece>& exp_avg,
                                    const std::vector<TensorPiece>& exp_avg_sq);

// Serial: the shape of /model/<name>, or {} when the file has no such tensor (or cannot be read: verify first).
// moe-export uses it to learn adapter ranks a run took from model.adapter_from.
std::vector<i64> checkpoint_tensor_shape(const std::string& path, const std::string& name);

// Serial full check: complete attribute, format version, every dataset read in full and its checksum
// recomputed. Returns "" when valid, else the reason.
std::string verify_checkpoint(const std::string& path);

}  // namespace moe
