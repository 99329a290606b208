#include "core/completion_queue.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>

namespace pyserve {

CompletionQueue::CompletionQueue() {
  fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error("eventfd failed");
}

CompletionQueue::~CompletionQueue() {
  if (fd_ >= 0) close(fd_);
}

void CompletionQueue::SignalLocked() {
  if (signaled_) return;
  signaled_ = true;
  const uint64_t one = 1;
  ssize_t rc;
  do {
    rc = write(fd_, &one, sizeof(one));
  } while (rc < 0 && errno == EINTR);
}

void CompletionQueue::Push(std::vector<Completion>* batch) {
  if (batch->empty()) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (items_.empty()) {
    items_.swap(*batch);
  } else {
    for (auto& c : *batch) items_.push_back(std::move(c));
  }
  batch->clear();
  SignalLocked();
}

void CompletionQueue::Push(Completion completion) {
  std::lock_guard<std::mutex> lock(mu_);
  items_.push_back(std::move(completion));
  SignalLocked();
}

std::vector<Completion> CompletionQueue::Drain() {
  std::vector<Completion> out;
  std::lock_guard<std::mutex> lock(mu_);
  out.swap(items_);
  if (signaled_) {
    uint64_t value;
    ssize_t rc;
    do {
      rc = read(fd_, &value, sizeof(value));
    } while (rc < 0 && errno == EINTR);
    signaled_ = false;
  }
  return out;
}

bool CompletionQueue::Wait(int timeout_ms) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!items_.empty()) return true;
  }
  pollfd p{fd_, POLLIN, 0};
  return poll(&p, 1, timeout_ms) > 0;
}

}  // namespace pyserve
