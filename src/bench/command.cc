#include "bench/command.h"

#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "bench/local.h"
#include "bench/process.h"
#include "bench/report.h"
#include "bench/runner.h"
#include "runtime/dispatcher.h"
#include "tpfuse/fused_op.h"
#include "tpfuse/status.h"

namespace tpfuse::bench {
namespace {

namespace fs = std::filesystem;

// Once one rank has failed, the others may wait for it inside NCCL forever: they get this long.
constexpr double kGraceSeconds = 20;
constexpr double kKillWaitSeconds = 5;

const char* CommandName(Mode mode) { return mode == Mode::kBench ? "bench" : "tune"; }

std::string DefaultOut(Mode mode) {
  return mode == Mode::kBench ? "tpfuse-bench" : "tpfuse-strategy.json";
}

int Fail(Mode mode, const Status& status) {
  std::fprintf(stderr, "tpfuse %s: error: %s\n", CommandName(mode), status.message().c_str());
  return kExitFailed;
}

// A value outside its option's range or choices: a usage error, as the other commands' are.
int UsageError(Mode mode, const Status& status) {
  std::fprintf(stderr, "tpfuse %s: error: %s\nRun 'tpfuse %s --help' for usage.\n",
               CommandName(mode), status.message().c_str(), CommandName(mode));
  return kExitUsage;
}

// A temporary directory for the plan and the unique-id file, removed when the run ends.
class TempDir {
 public:
  static StatusOr<std::string> Make(TempDir* dir) {
    std::string pattern = (fs::temp_directory_path() / "tpfuse-bench.XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr)
      return Internal("cannot create a temporary directory like ", pattern);
    dir->path_ = pattern;
    return pattern;
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }

 private:
  std::string path_;
};

Status CheckOutput(const Plan& plan) {
  std::error_code ec;
  if (plan.mode == Mode::kBench) {
    fs::create_directories(plan.out, ec);
    if (ec || !fs::is_directory(plan.out))
      return InvalidArgument("--out: cannot create the directory '", plan.out, "'",
                             ec ? StrCat(": ", ec.message()) : "");
    if (::access(plan.out.c_str(), W_OK) != 0)
      return InvalidArgument("--out: the directory '", plan.out, "' is not writable");
    return Status::Ok();
  }
  const fs::path parent = fs::path(plan.out).parent_path();
  if (fs::is_directory(plan.out))
    return InvalidArgument("--out: '", plan.out, "' is a directory; give a file name");
  if (!fs::is_directory(parent))
    return InvalidArgument("--out: the directory '", parent.string(), "' does not exist");
  if (::access(parent.c_str(), W_OK) != 0)
    return InvalidArgument("--out: the directory '", parent.string(), "' is not writable");
  return Status::Ok();
}

int RunChild(const CommandFlags& flags, Mode mode) {
  StatusOr<int64_t> rank = ParseInt(flags.child_rank, "--child-rank", 0, 1023);
  if (!rank.ok()) return Fail(mode, rank.status());
  std::ifstream in(flags.child_plan);
  if (!in) return Fail(mode, NotFound("cannot read the plan '", flags.child_plan, "'"));
  std::stringstream text;
  text << in.rdbuf();
  StatusOr<Plan> plan = Plan::FromJson(text.str());
  if (!plan.ok()) return Fail(mode, plan.status());
  return RunRank(*plan, int(*rank));
}

}  // namespace

StatusOr<Plan> PlanFromFlags(const CommandFlags& f, Mode mode) {
  Plan plan;
  plan.mode = mode;
  if (!f.world_size.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(const int64_t n, ParseInt(f.world_size, "--world-size", 1, 1024));
    if (n != 1 && n != 2 && n != 4 && n != 8)
      return InvalidArgument("--world-size: the fused op runs at world size 1, 2, 4 or 8, not ", n);
    if (n == 1 && mode == Mode::kTune)
      return InvalidArgument("--world-size 1: tune picks among the fused op's strategies, and "
                             "without communication there is only one");
    plan.world_size = int(n);
  }
  const bool local = plan.world_size == 1;
  if (f.tokens.empty()) {
    plan.tokens = DefaultTokens();
  } else {
    TPFUSE_ASSIGN_OR_RETURN(plan.tokens, ParseIntList(f.tokens, "--tokens", 1, kMaxSweepTokens));
  }
  if (f.hidden.empty()) {
    plan.hidden = local ? DefaultLocalHidden() : DefaultHidden();
  } else {
    TPFUSE_ASSIGN_OR_RETURN(plan.hidden, ParseIntList(f.hidden, "--hidden", 1, int64_t(1) << 20));
  }
  if (f.quant.empty()) {
    plan.quants = DefaultQuants();
  } else {
    TPFUSE_ASSIGN_OR_RETURN(plan.quants, ParseQuantList(f.quant));
  }
  TPFUSE_ASSIGN_OR_RETURN(plan.emit_norm, ParseEmitNorm(f.emit_norm));
  if (!f.ops_per_graph.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(const int64_t v, ParseInt(f.ops_per_graph, "--ops-per-graph", 1, 1000));
    plan.ops_per_graph = int(v);
  }
  if (!f.replays.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(const int64_t v, ParseInt(f.replays, "--replays", 1, 100000));
    plan.replays = int(v);
  }
  if (!f.warmup.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(const int64_t v, ParseInt(f.warmup, "--warmup", 0, 1000));
    plan.warmup = int(v);
  }
  if (!f.seed.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(const int64_t v, ParseInt(f.seed, "--seed", 0, INT64_MAX));
    plan.seed = uint64_t(v);
  }
  if (!f.timeout.empty()) {
    TPFUSE_ASSIGN_OR_RETURN(plan.timeout_seconds, ParseSeconds(f.timeout, "--timeout"));
  }
  plan.pdl = !f.no_pdl;
  std::error_code ec;
  const std::string out = f.out.empty() ? DefaultOut(mode) : f.out;
  plan.out = fs::absolute(out, ec).string();
  if (ec) return InvalidArgument("--out: '", out, "': ", ec.message());
  if (!f.table.empty()) {
    if (local)
      return InvalidArgument("--table: at world size 1 there is no strategy to dispatch (the "
                             "fused op runs without communication)");
    plan.table = fs::absolute(f.table, ec).string();
    if (ec) return InvalidArgument("--table: '", f.table, "': ", ec.message());
  }
  return plan;
}

Status CheckPlanInputs(const Plan& plan) {
  if (!plan.table.empty()) {
    // Read it now: a bad table is the user's error, not a rank's.
    StatusOr<runtime::StrategyTable> table = runtime::StrategyTable::Load(plan.table);
    if (!table.ok()) return table.status().WithContext("--table");
  }
  // Shapes the fused op cannot take (H not a multiple of 8, over the kernel's limit, group
  // size not dividing H) are input errors, named before any GPU work.
  const bool local = plan.world_size == 1;
  const FusionCapabilities caps = CudaFusionCapabilities();
  for (int64_t h : plan.hidden) {
    for (QuantMode q : plan.quants) {
      const AllreduceRmsnormSpec spec =
          local ? MakeLocalSpec(h, q, plan.emit_norm) : MakeSpec(h, q, plan.emit_norm);
      if (Status valid = spec.Validate(); !valid.ok())
        return InvalidArgument("--hidden ", h, " with --quant ", QuantModeName(q), ": ",
                               valid.message());
      if (std::string why = caps.WhyUnsupported(spec, local ? 1 : 2); !why.empty())
        return InvalidArgument("--hidden ", h, " with --quant ", QuantModeName(q), ": ", why);
    }
  }
  return Status::Ok();
}

int RunCommand(const CommandFlags& flags, Mode mode) {
  if (!flags.child_plan.empty()) return RunChild(flags, mode);
  StatusOr<Plan> parsed = PlanFromFlags(flags, mode);
  if (!parsed.ok()) return UsageError(mode, parsed.status());
  Plan plan = std::move(parsed).value();
  if (Status inputs = CheckPlanInputs(plan); !inputs.ok()) return Fail(mode, inputs);

  if (!HaveCuda()) {
    return Fail(mode, Unimplemented("this tpfuse was built without the CUDA backend (nvcc and "
                                    "NCCL were not found when it was configured): there is "
                                    "nothing to measure"));
  }
  StatusOr<int> gpus = CountGpus();
  if (plan.world_size == 1) {
    // One GPU, this process: no rank processes, no NCCL.
    if (!gpus.ok() || *gpus < 1) {
      return Fail(mode, FailedPrecondition(
                            "no usable GPU here",
                            gpus.ok() ? "" : StrCat(" (", gpus.status().message(), ")"),
                            "; --world-size 1 needs one"));
    }
    if (Status out = CheckOutput(plan); !out.ok()) return Fail(mode, out);
    return RunLocalBench(plan);
  }
  const char* one_gpu_hint =
      mode == Mode::kBench ? " (--world-size 1 measures the fused op on one GPU)" : "";
  if (!gpus.ok()) {
    return Fail(mode,
                FailedPrecondition("no usable GPU here (", gpus.status().message(), "); ",
                                   CommandName(mode), " needs at least 2, one process per GPU"));
  }
  const int count = *gpus;
  if (count < 2) {
    return Fail(mode,
                FailedPrecondition("found ", count, " GPU", count == 1 ? "" : "s", "; ",
                                   CommandName(mode), " needs at least 2, one process per GPU",
                                   count == 1 ? one_gpu_hint : ""));
  }
  if (plan.world_size == 0) {
    if (count != 2 && count != 4 && count != 8) {
      return Fail(mode, InvalidArgument("this machine has ", count,
                                        " GPUs; the fused op runs across 2, 4 or 8 GPUs (or "
                                        "1): pick a world size with --world-size"));
    }
    plan.world_size = count;
  } else if (plan.world_size > count) {
    return Fail(mode, InvalidArgument("--world-size ", plan.world_size, ": this machine has only ",
                                      count, " GPUs"));
  }
  if (Status out = CheckOutput(plan); !out.ok()) return Fail(mode, out);

  TempDir temp;
  StatusOr<std::string> dir = TempDir::Make(&temp);
  if (!dir.ok()) return Fail(mode, dir.status());
  plan.id_file = (fs::path(*dir) / "nccl-unique-id").string();
  const std::string plan_path = (fs::path(*dir) / "plan.json").string();
  if (Status written = WriteFileAtomically(plan_path, plan.ToJson()); !written.ok())
    return Fail(mode, written);
  StatusOr<std::string> exe = SelfExecutable();
  if (!exe.ok()) return Fail(mode, exe.status());

  std::vector<std::vector<std::string>> argvs;
  for (int r = 0; r < plan.world_size; ++r) {
    argvs.push_back(
        {*exe, CommandName(mode), "--child-plan", plan_path, "--child-rank", std::to_string(r)});
  }
  std::fflush(stdout);
  std::fflush(stderr);
  ProcessGroupOptions options;
  options.timeout_seconds = plan.timeout_seconds;
  options.grace_seconds = kGraceSeconds;
  options.kill_wait_seconds = kKillWaitSeconds;
  const Status ran = RunProcessGroup(argvs, options);
  if (!ran.ok()) return Fail(mode, ran);
  return kExitOk;
}

}  // namespace tpfuse::bench
