// Owns TbEventWriter (event_writer.h): builds the Event protos of tb_event.proto and writes them framed; the only
// file of moe_tb that sees protobuf.
#include "io/tensorboard/event_writer.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "core/error.h"
#include "io/tensorboard/record_framing.h"
#include "io/tensorboard/tb_event.pb.h"

namespace moe::tb {

namespace {

double wall_seconds() {
  using namespace std::chrono;
  return duration_cast<duration<double>>(system_clock::now().time_since_epoch()).count();
}

std::string host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  return buf;
}

proto::Event make_event(int64_t step) {
  proto::Event event;
  event.set_wall_time(wall_seconds());
  event.set_step(step);
  return event;
}

// Opens `path` for writing only if it does not exist yet ("x": O_EXCL), so two writers never share a file.
std::FILE* open_new(const std::string& path) { return std::fopen(path.c_str(), "wbx"); }

}  // namespace

void TbEventWriter::FileCloser::operator()(std::FILE* f) const {
  if (f) std::fclose(f);
}

TbEventWriter::TbEventWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MT_INPUT_CHECK(!ec, "log.tensorboard: cannot create directory ", dir, ": ", ec.message());
  MT_INPUT_CHECK(std::filesystem::is_directory(dir, ec), "log.tensorboard: ", dir, " is not a directory");
  const auto seconds = static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(
                                                  std::chrono::system_clock::now().time_since_epoch())
                                                  .count());
  const std::string base = (std::filesystem::path(dir) / ("events.out.tfevents." + std::to_string(seconds) + "." +
                                                          host_name() + "." + std::to_string(getpid())))
                               .string();
  path_ = base;
  file_.reset(open_new(path_));
  // Same second, same process (a second writer on this directory): a numeric suffix keeps the files apart.
  for (int n = 1; !file_ && errno == EEXIST && n < 1000; ++n) {
    path_ = base + "." + std::to_string(n);
    file_.reset(open_new(path_));
  }
  MT_INPUT_CHECK(file_ != nullptr, "log.tensorboard: cannot create event file ", path_, ": ", std::strerror(errno));
  proto::Event event = make_event(0);
  event.set_file_version("brain.Event:2");
  write_record(event.SerializeAsString());
}

TbEventWriter::~TbEventWriter() = default;

void TbEventWriter::scalar(const std::string& tag, int64_t step, double value) {
  proto::Event event = make_event(step);
  proto::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  v->set_simple_value(static_cast<float>(value));
  write_record(event.SerializeAsString());
}

void TbEventWriter::histogram(const std::string& tag, int64_t step, const std::vector<double>& bucket_limit,
                              const std::vector<double>& bucket, double min, double max, double num, double sum,
                              double sum_sq) {
  MT_CHECK(!bucket_limit.empty() && bucket_limit.size() == bucket.size(), "histogram ", tag, ": ",
           bucket_limit.size(), " bucket limits, ", bucket.size(), " buckets");
  for (size_t i = 1; i < bucket_limit.size(); ++i)
    MT_CHECK(bucket_limit[i - 1] < bucket_limit[i], "histogram ", tag, ": bucket limits not increasing at ", i);
  proto::Event event = make_event(step);
  proto::Summary::Value* v = event.mutable_summary()->add_value();
  v->set_tag(tag);
  proto::HistogramProto* h = v->mutable_histo();
  h->set_min(min);
  h->set_max(max);
  h->set_num(num);
  h->set_sum(sum);
  h->set_sum_squares(sum_sq);
  h->mutable_bucket_limit()->Add(bucket_limit.begin(), bucket_limit.end());
  h->mutable_bucket()->Add(bucket.begin(), bucket.end());
  write_record(event.SerializeAsString());
}

void TbEventWriter::expert_load_histogram(const std::string& tag, int64_t step, const std::vector<int64_t>& load) {
  MT_CHECK(!load.empty(), "expert-load histogram ", tag, " has no experts");
  const size_t n_experts = load.size();
  std::vector<double> limit(n_experts), weight(n_experts);
  double num = 0, sum = 0, sum_sq = 0;
  double lo = -0.5, hi = static_cast<double>(n_experts) - 0.5;  // edges of the first/last loaded expert
  bool any_load = false;
  for (size_t e = 0; e < n_experts; ++e) {
    MT_CHECK(load[e] >= 0, "expert-load histogram ", tag, ": expert ", e, " has load ", load[e]);
    const double x = static_cast<double>(e), w = static_cast<double>(load[e]);
    limit[e] = x + 0.5;
    weight[e] = w;
    num += w;
    sum += w * x;
    sum_sq += w * x * x;
    if (load[e] > 0) {
      if (!any_load) lo = x - 0.5;
      hi = x + 0.5;
      any_load = true;
    }
  }
  histogram(tag, step, limit, weight, lo, hi, num, sum, sum_sq);
}

void TbEventWriter::session_start(int64_t step) {
  proto::Event event = make_event(step);
  event.mutable_session_log()->set_status(proto::SessionLog::START);
  write_record(event.SerializeAsString());
}

void TbEventWriter::flush() {
  const bool ok = std::fflush(file_.get()) == 0 && !std::ferror(file_.get());
  MT_INPUT_CHECK(ok, "log.tensorboard: cannot write event file ", path_, ": ", std::strerror(errno));
}

void TbEventWriter::write_record(const std::string& event_bytes) {
  std::string framed;
  append_record(framed, event_bytes);
  const bool ok = std::fwrite(framed.data(), 1, framed.size(), file_.get()) == framed.size();
  MT_INPUT_CHECK(ok, "log.tensorboard: cannot write event file ", path_, ": ", std::strerror(errno));
}

}  // namespace moe::tb
