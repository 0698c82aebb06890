// The shipped binaries as a user runs them: a cloud ce-node and an edge ce-node as two
// processes on loopback, from config files, compared with ce-generate and the in-process oracle.
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "model/blas_kernel.hpp"
#include "model/text/sentencepiece_tokenizer.hpp"
#include "tests/integration/processes.hpp"
#include "tests/prometheus.hpp"

using namespace ce;
using namespace ce::test;


BOOST_AUTO_TEST_SUITE(two_processes)

BOOST_AUTO_TEST_CASE(edge_and_cloud_processes_answer_like_one_process) {
  Deployment d;
  CloudProcess cloud(d.write_config("cloud.ini", "role = \"cloud\"\n[ce.listen]\nport = 0\n"), d.dir.file("port"));
  const std::string edge = d.write_config(
      "edge.ini", "role = \"edge\"\n[ce.cloud]\nport = " + std::to_string(cloud.port) + "\n");
  const std::string prompt = "The jury said";
  auto model = Model::load(d.model_path);
  SentencePieceTokenizer tok(d.model_path + "/tokenizer.model");
  std::vector<int32_t> ids{static_cast<int32_t>(model->config().bos_id)};
  for (auto id : tok.encode(prompt)) ids.push_back(id);
  const int n = 16;

  for (double theta : {0.0, 2.0, 0.6}) {
    auto out = run_capture(bin + "ce-node --config " + edge + " --json --max-tokens " + std::to_string(n) +
                           " --set ce.exit.threshold=" + std::to_string(theta) + " --prompt '" + prompt + "' 2>/dev/null");
    auto j = nlohmann::json::parse(out);
    BOOST_TEST(j["error"].get<std::string>() == "");
    auto tokens = j["tokens"].get<std::vector<int32_t>>();
    auto want = oracle(*model, ids, theta, n);
    expect_matches_oracle(tokens, want, theta);
    BOOST_TEST(j["stats"]["degraded_tokens"].get<int>() == 0);
    // Each confirmed position once (a speculation's rolled-back rows are counted apart, as wasted).
    BOOST_TEST(j["stats"]["bytes_uploaded"].get<uint64_t>() - j["stats"]["bytes_wasted"].get<uint64_t>() ==
               (ids.size() + n) * 32u * 2u);
    if (theta > 1) BOOST_TEST(j["stats"]["cloud_tokens"].get<int>() == n);
    if (theta == 0.0) {
      // θ = 0 is ce-generate's early-exit output: every token from the first exit.
      auto gen = run_capture(bin + "ce-generate --model " + d.model_path + " --threshold 0 --threads 1 --max-tokens " +
                             std::to_string(n) + " --prompt '" + prompt + "'");
      std::string listed;
      for (auto t : tokens) listed += std::to_string(t) + "@1 ";
      listed.pop_back();
      BOOST_TEST(gen.find(listed) != std::string::npos, "ce-generate printed:\n" << gen);
    }
  }
  BOOST_TEST(cloud.stop() == 0);  // SIGTERM: clean exit
}

BOOST_AUTO_TEST_CASE(a_wrong_model_is_refused_and_the_edge_answers_standalone) {
  Deployment d;
  TempDir other;
  const std::string other_model = write_model(other, collab_config(2048), 99, tokenizer_file);
  CloudProcess cloud(d.write_config("cloud.ini", "role = \"cloud\"\n[ce.listen]\nport = 0\n"), d.dir.file("port"));
  const std::string edge = d.dir.file("edge-other.ini");
  std::ofstream(edge) << "[ce]\nrole = \"edge\"\nmodel.path = \"" << other_model << "\"\nthreads = 1\n[ce.cloud]\nport = "
                      << cloud.port << "\n";
  const std::string log = d.dir.file("edge.log");
  auto out = run_capture(bin + "ce-node --config " + edge + " --json --max-tokens 6 --wait-cloud 1500ms --prompt 'The' 2>" + log);
  const std::string errors = read_file(log);
  BOOST_TEST(errors.find("weights hash") != std::string::npos, errors);
  auto j = nlohmann::json::parse(out);
  BOOST_TEST(j["tokens"].size() == 6u);
  BOOST_TEST(j["stats"]["mode"].get<std::string>() == "standalone");
}

BOOST_AUTO_TEST_CASE(cloud_only_without_a_cloud_is_a_clear_error_on_the_command_line) {
  Deployment d;
  const uint16_t nobody = free_port();  // nothing listens there
  auto cfg = d.write_config("edge.ini", "role = \"edge\"\nmode = \"cloud-only\"\n[ce.cloud]\nport = " +
                                            std::to_string(nobody) + "\n");
  auto out = run_capture(bin + "ce-node --config " + cfg + " --max-tokens 4 --wait-cloud 300ms --prompt 'The' 2>&1; echo rc=$?");
  BOOST_TEST(out.find("cloud-only response failed") != std::string::npos, out);
  BOOST_TEST(out.find("rc=0") == std::string::npos, out);
}

BOOST_AUTO_TEST_CASE(bad_configs_are_refused_before_anything_starts) {
  Deployment d;
  auto cfg = d.write_config("bad.ini", "role = \"edge\"\n[ce.cloud]\nprot = 7700\n");
  auto out = run_capture(bin + "ce-node --config " + cfg + " --prompt x 2>&1; echo rc=$?");
  BOOST_TEST(out.find("ce.cloud.prot") != std::string::npos, out);
  BOOST_TEST(out.find("rc=1") != std::string::npos, out);
  auto split = d.write_config("split.ini", "role = \"edge\"\n[ce.split]\nlayer = 9\n");
  out = run_capture(bin + "ce-node --config " + split + " --prompt x 2>&1; echo rc=$?");
  BOOST_TEST(out.find("split layer 9") != std::string::npos, out);
  BOOST_TEST(out.find("rc=1") != std::string::npos, out);
  // --wait-cloud reads durations as the files do: a bare number is refused, naming the flag.
  auto good = d.write_config("good.ini", "role = \"edge\"\nmode = \"standalone\"\n");
  out = run_capture(bin + "ce-node --config " + good + " --wait-cloud 3 --prompt x 2>&1; echo rc=$?");
  BOOST_TEST(out.find("--wait-cloud: a duration needs a unit") != std::string::npos, out);
  BOOST_TEST(out.find("rc=1") != std::string::npos, out);
}

BOOST_AUTO_TEST_CASE(set_paths_resolve_against_the_working_directory) {
  // The command runs inside the model folder, the config lives one level up: --set
  // ce.model.path=../NAME is read from the working directory, as a shell user reads it (from the
  // config file's folder it would name a sibling of that folder).
  Deployment d;
  auto cfg = d.write_config("edge.ini", "role = \"edge\"\nmode = \"standalone\"\n");
  const auto model_dir = std::filesystem::path(d.model_path).lexically_normal();
  BOOST_REQUIRE(model_dir.parent_path() != std::filesystem::path(cfg).parent_path() / "");
  auto out = run_capture("cd " + model_dir.string() + " && " + bin + "ce-node --config " + cfg +
                         " --set ce.model.path=../" + model_dir.filename().string() + " --print-config 2>&1; echo rc=$?");
  const auto line = out.substr(out.find("ce.model.path"), out.find('\n', out.find("ce.model.path")) - out.find("ce.model.path"));
  BOOST_TEST(line.find("\"" + model_dir.string() + "\"") != std::string::npos, line);
  BOOST_TEST(out.find("rc=0") != std::string::npos, out);
}

BOOST_AUTO_TEST_CASE(mutual_tls_admits_only_edges_with_a_certificate_from_the_ca) {
  Deployment d;
  const std::string certs = d.dir.file("certs");
  run_capture("bash " + std::string(CE_SOURCE_DIR) + "/deploy/make-certs " + certs + " cloud edge >/dev/null 2>&1");
  run_capture("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=rogue -keyout " + certs +
              "/rogue.key -out " + certs + "/rogue.pem >/dev/null 2>&1");
  auto tls = [&](const std::string& name, const std::string& ca) {
    return "[ce.tls]\ncertificate = \"" + certs + "/" + name + ".pem\"\nkey = \"" + certs + "/" + name +
           ".key\"\nca = \"" + certs + "/" + ca + ".pem\"\n";
  };
  CloudProcess cloud(d.write_config("cloud.ini", "role = \"cloud\"\n[ce.listen]\nport = 0\n[ce.http]\nport = 0\n" +
                                                     tls("cloud", "ca")),
                     d.dir.file("port"));
  BOOST_REQUIRE(cloud.http_port != 0);
  // How far each edge got: connections the cloud's port took, and Hellos that reached the cloud.
  auto counts = [&] {
    httplib::Client http("127.0.0.1", cloud.http_port);
    auto r = http.Get("/metrics");
    BOOST_REQUIRE(r);
    return std::pair{metric(r->body, R"(ce_cloud_connections_total{result="accepted"})"),
                     metric(r->body, R"(ce_cloud_hellos_total{result="welcomed"})")};
  };
  auto edge_run = [&](const std::string& name, const std::string& extra) {
    const std::string cfg = d.write_config(
        name + ".ini", "role = \"edge\"\n[ce.cloud]\nport = " + std::to_string(cloud.port) + "\n" + extra);
    auto out = run_capture(bin + "ce-node --config " + cfg +
                           " --json --max-tokens 4 --wait-cloud 2s --set ce.exit.threshold=2 --prompt 'The' 2>/dev/null");
    return nlohmann::json::parse(out);
  };
  auto good = edge_run("good", tls("edge", "ca"));
  BOOST_TEST(good["stats"]["cloud_tokens"].get<int>() == 4);
  auto [connections, welcomed] = counts();
  BOOST_TEST(connections >= 1);
  BOOST_TEST(welcomed == 1);
  // A self-signed edge and a plain-TCP edge reach the port (the connection is accepted) and are
  // turned away in the TLS handshake: no Hello of theirs reaches the cloud, they answer standalone.
  for (auto [name, extra] : std::vector<std::pair<std::string, std::string>>{{"rogue", tls("rogue", "rogue")},
                                                                              {"plain", ""}}) {
    auto refused = edge_run(name, extra);
    BOOST_TEST(refused["stats"]["cloud_tokens"].get<int>() == 0, name);
    BOOST_TEST(refused["stats"]["mode"].get<std::string>() == "standalone", name);
    auto [connections_after, welcomed_after] = counts();
    BOOST_TEST(connections_after > connections, name << ": its connection never reached the cloud's port");
    BOOST_TEST(welcomed_after == 1, name);
    connections = connections_after;
  }
}

// The binaries re-execute themselves with OPENBLAS_CORETYPE when OpenBLAS would run kernels weaker
// than the CPU supports (it falls back to SSE3 "Prescott" on CPUs it does not recognise).
// Skipped, and said so in the log, where the CPU is not x86 with AVX2 or torch's BLAS is not OpenBLAS.
boost::test_tools::assertion_result openblas_on_avx2(boost::unit_test::test_unit_id) {
  boost::test_tools::assertion_result ok(!preferred_blas_kernel().empty() && !blas_kernel_name().empty());
  ok.message() << "not x86 with AVX2, or torch's BLAS is not OpenBLAS";
  return ok;
}

BOOST_AUTO_TEST_CASE(binaries_run_the_blas_kernel_the_cpu_supports, *boost::unit_test::precondition(openblas_on_avx2)) {
  const auto preferred = preferred_blas_kernel();
  const std::string model = std::string(CE_SOURCE_DIR) + "/models/ce-brown-8l";
  auto out = run_capture("env -u OPENBLAS_CORETYPE " + bin + "ce-model --info " + model);
  const auto at = out.find("OpenBLAS kernel ");
  BOOST_REQUIRE_MESSAGE(at != std::string::npos, out);
  const auto kernel = out.substr(at + 16, out.find('\n', at) - at - 16);
  BOOST_TEST_MESSAGE("preferred " << preferred << ", ce-model runs " << kernel);
  BOOST_TEST(kernel != "Prescott");
  if (blas_kernel_name() == "Prescott") BOOST_TEST(kernel == preferred);  // this process shows the fallback
  // A user's explicit choice stands.
  out = run_capture("OPENBLAS_CORETYPE=Haswell " + bin + "ce-model --info " + model);
  BOOST_TEST(out.find("OpenBLAS kernel Haswell") != std::string::npos, out);
}

BOOST_AUTO_TEST_SUITE_END()
