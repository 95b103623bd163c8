// Owns the TensorBoard event-file writer (DESIGN §6 log.tensorboard): scalars, histograms and session marks as
// TFRecord-framed Event protos in one events.out.tfevents.* file. No protobuf or ISA-L header is seen from here.
#pragma once
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace moe::tb {

class TbEventWriter {
 public:
  // Creates `dir` (like mkdir -p) and a new file events.out.tfevents.<unix seconds>.<hostname>.<pid> in it (a
  // numeric suffix is added if that name exists); its first record is the file_version "brain.Event:2" event.
  // BadInput naming the path when the directory or the file cannot be created or written.
  explicit TbEventWriter(const std::string& dir);
  ~TbEventWriter();  // flushes and closes; errors there are not reported (call flush() to see them)
  TbEventWriter(const TbEventWriter&) = delete;
  TbEventWriter& operator=(const TbEventWriter&) = delete;

  // One scalar at `step`; TensorBoard stores it as a float32 (simple_value).
  void scalar(const std::string& tag, int64_t step, double value);

  // A histogram with explicit buckets: bucket i covers (bucket_limit[i-1], bucket_limit[i]] and holds weight
  // bucket[i] ≥ 0; both [B], limits strictly increasing, B ≥ 1. min/max: the range the data spans (TensorBoard
  // draws the first bucket from min and the last up to max); num = Σ weights, sum = Σ weight·x, sum_sq = Σ weight·x².
  void histogram(const std::string& tag, int64_t step, const std::vector<double>& bucket_limit,
                 const std::vector<double>& bucket, double min, double max, double num, double sum, double sum_sq);

  // Expert-load histogram of one MoE layer: load [E] = tokens routed to expert e ≥ 0, drawn over x = expert index.
  // Bucket e covers (e - 0.5, e + 0.5] with weight load[e]; num/sum/sum_sq are the load-weighted moments of the
  // expert index. min/max are the outer edges of the first/last expert with load > 0 (-0.5 and E - 0.5 when all are
  // 0): TensorBoard drops empty end buckets and draws the remaining ones from min to max, so each expert keeps its
  // unit-wide bar.
  void expert_load_histogram(const std::string& tag, int64_t step, const std::vector<int64_t>& load);

  // SessionLog START at `step`: written when a run resumes from a checkpoint of `step`, so TensorBoard drops the
  // events of the lost steps ≥ `step` that an earlier writer put in this directory.
  void session_start(int64_t step);

  // Pushes buffered records to the file (fflush); BadInput naming the file on a write error. Calling it after
  // each logged step is the caller's job.
  void flush();

  const std::string& path() const { return path_; }

 private:
  // Frames one serialized Event and writes it; BadInput naming the file when the write fails.
  void write_record(const std::string& event_bytes);

  struct FileCloser {
    void operator()(std::FILE* f) const;
  };
  std::string path_;
  std::unique_ptr<std::FILE, FileCloser> file_;
};

}  // namespace moe::tb
