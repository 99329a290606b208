// What executes a batch. Backends are called by the scheduler's instance threads, once per batch,
// without the GIL (a Python backend takes it inside Execute).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/types.h"

namespace pyserve {

struct BatchInput {
  std::string name;
  TensorView view;                  // batch dimension first when batching
  std::shared_ptr<const void> holder;  // keeps `view.data` alive (a pooled buffer)
};

struct BatchOutput {
  std::string name;
  TensorView view;                      // batch dimension first when batching
  std::shared_ptr<const void> holder;   // keeps `view.data` alive as long as any slice of it lives
};

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs one batch. On success fills `outputs` (one per declared output, in any order). Must be
  // safe to call from `instance_count` threads at once.
  virtual Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) = 0;
};

// Returns each input as the output of the same position, renamed to the declared output names
// (a no-op model for tests and benchmarks: its outputs identify its inputs).
class IdentityBackend final : public Backend {
 public:
  explicit IdentityBackend(std::vector<std::string> output_names) : output_names_(std::move(output_names)) {}
  Status Execute(const std::vector<BatchInput>& inputs, std::vector<BatchOutput>* outputs) override {
    for (size_t i = 0; i < inputs.size() && i < output_names_.size(); ++i) {
      outputs->push_back(BatchOutput{output_names_[i], inputs[i].view, inputs[i].holder});
    }
    return Status::Ok();
  }

 private:
  const std::vector<std::string> output_names_;
};

}  // namespace pyserve
