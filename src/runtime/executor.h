// Executors run a graph on a backend, one set of inputs per rank. The executor is the only
// place where the IR and the backends meet.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/tensor.h"
#include "ir/graph.h"

namespace tpfuse::runtime {

// Parameter name (without '%') -> tensor.
using TensorMap = std::map<std::string, HostTensor>;
// [rank][i]: rank's value of the graph's i-th returned value.
using RankOutputs = std::vector<std::vector<HostTensor>>;

class Executor {
 public:
  virtual ~Executor() = default;
  virtual std::string name() const = 0;  // "cpu", "cuda"
  virtual int world_size() const = 0;
  // inputs.size() == world_size; inputs[r] holds every parameter of the graph on rank r.
  // The token count symbol T is bound from the inputs' shapes. Shapes and dtypes are checked
  // against the parameter types; errors name the parameter.
  virtual StatusOr<RankOutputs> Run(const ir::Graph& graph,
                                    const std::vector<TensorMap>& inputs) = 0;
};

// The CPU reference backend with `world_size` simulated ranks: the oracle.
std::unique_ptr<Executor> MakeCpuExecutor(int world_size);

// Binds the graph's symbolic dims (T) from one rank's inputs and checks every parameter. A
// symbol that appears only inside products binds from one whose other factors are known (2*S
// gives S; then B*S gives B); the error names the dim that cannot bind or does not divide.
StatusOr<std::map<std::string, int64_t>> BindSymbols(const ir::Graph& graph,
                                                     const TensorMap& inputs);

}  // namespace tpfuse::runtime
