// Fuzz harness: YAML text + --set overrides → parse_config; an accepted config must print and read back unchanged.
#include <string>
#include <vector>

#include "config/config.h"
#include "fuzz_common.h"

// Input: the YAML text, then optional NUL-separated --set items ("key=value").
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  size_t cut = all.find('\0');
  const std::string yaml = all.substr(0, cut);
  std::vector<std::string> sets;
  while (cut != std::string::npos && sets.size() < 16) {
    const size_t next = all.find('\0', cut + 1);
    sets.push_back(all.substr(cut + 1, next == std::string::npos ? std::string::npos : next - cut - 1));
    cut = next;
  }
  std::string printed;
  const int rc = moe::fuzz::guarded([&] { printed = moe::config_to_yaml(moe::parse_config(yaml, sets, "fuzz.yaml")); });
  if (printed.empty()) return rc;
  // Round trip: what config_to_yaml prints (and checkpoints store) must parse back to the same configuration.
  try {
    const std::string again = moe::config_to_yaml(moe::parse_config(printed, {}, "printed.yaml"));
    if (again != printed) {
      std::fprintf(stderr, "fuzz: config_to_yaml does not round-trip:\n%s\n--- read back as ---\n%s\n", printed.c_str(),
                   again.c_str());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: the printed config does not parse: %.2000s\n%s\n", e.what(), printed.c_str());
    std::abort();
  }
  return 0;
}
