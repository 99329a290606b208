// A request as the core sees it, and the completion that answers it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/batch_policy.h"
#include "core/types.h"

namespace pyserve {

// Whatever the submitter needs kept alive until the request is answered (the input arrays it lent,
// the future to complete). The core moves it from the request to the completion and never destroys
// it: only the consumer of the completion queue does (in Python, with the GIL held).
class RequestOwner {
 public:
  virtual ~RequestOwner() = default;
};

struct RequestInput {
  TensorView view;     // full shape, batch dimension first when batching; data borrowed from the owner
  std::string owned;   // storage for `view.data` when the core had to build it (BYTES)
  bool present = true; // false: an optional input the request left out (view empty, not validated)
};

struct Request {
  uint64_t id = 0;
  std::vector<RequestInput> inputs;  // in the model's input order
  int priority_level = 1;            // 1 is the highest
  int64_t timeout_ns = 0;            // 0: the model's default
  std::unique_ptr<RequestOwner> owner;

  // Filled by the scheduler at submit.
  PendingRequest pending;
};

// One output of one request: a slice of a batch output. `holder` keeps the batch output alive.
struct OutputSlice {
  std::string name;
  TensorView view;
  std::shared_ptr<const void> holder;
};

struct Completion {
  uint64_t id = 0;
  Status status;
  std::vector<OutputSlice> outputs;  // empty unless status is ok
  std::unique_ptr<RequestOwner> owner;
  int64_t queue_ns = -1;    // enqueue -> its batch started (or it timed out); -1: never queued
  int64_t compute_ns = -1;  // the backend call of its batch; -1: never ran
};

}  // namespace pyserve
