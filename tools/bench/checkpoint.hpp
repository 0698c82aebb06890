#pragma once
// The checkpoint: one line per measured response, appended as soon as it is measured, so that a
// run of hours (the full preset is ~3 h on 2 cores) survives being stopped and resumes where it
// left off. Its first line names the run; a checkpoint of another run is not resumed.
#include <string>
#include <vector>

#include "tools/bench/bench_run.hpp"

namespace ce::bench {

std::string checkpoint_line(const Row& r);
Row parse_checkpoint_line(const std::string& line);  // throws std::runtime_error saying what is wrong
// Rows of `path` when its header is `run_key`; none (and a note why, on stderr) otherwise.
std::vector<Row> load_checkpoint(const std::string& path, const std::string& run_key);

}  // namespace ce::bench
