// A user's program that reads data with fqt::data: writes a gzip IDX file and reads it back.
#include <filesystem>
#include <fqt/data/idx.hpp>
#include <iostream>

int main() {
  const auto path = std::filesystem::temp_directory_path() / "fqt-consumer-data.idx.gz";
  fqt::data::IdxArray array{{2, 3}, {1, 2, 3, 4, 5, 6}};
  fqt::data::write_idx(path, array, true);
  const fqt::data::IdxArray back = fqt::data::read_idx(path);
  std::filesystem::remove(path);
  const bool same = back.dims == array.dims && back.data == array.data;
  std::cout << "idx round trip: " << (same ? "yes" : "no") << "\n";
  return same ? 0 : 1;
}
