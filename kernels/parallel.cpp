#include "kernels/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace s0 {
namespace {

thread_local bool t_inside_parallel = false;

class Pool {
 public:
  explicit Pool(int n) { Resize(n); }
  ~Pool() { Stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void Resize(int n) {
    Stop();
    stop_ = false;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this] { Loop(); });
  }

  void Run(size_t n_tasks, const std::function<void(size_t)>& task) {
    {
      std::lock_guard<std::mutex> l(mu_);
      task_ = &task;
      n_tasks_ = n_tasks;
      next_ = 0;
      done_ = 0;
      ++generation_;
    }
    cv_.notify_all();
    Work();
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return done_ == n_tasks_; });
    task_ = nullptr;
  }

 private:
  void Work() {
    t_inside_parallel = true;
    for (;;) {
      size_t i = next_.fetch_add(1);
      if (i >= n_tasks_) break;
      (*task_)(i);
      std::lock_guard<std::mutex> l(mu_);
      if (++done_ == n_tasks_) done_cv_.notify_all();
    }
    t_inside_parallel = false;
  }

  void Loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return stop_ || (generation_ != seen && task_ != nullptr); });
        if (stop_) return;
        seen = generation_;
      }
      Work();
    }
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(size_t)>* task_ = nullptr;
  size_t n_tasks_ = 0;
  std::atomic<size_t> next_{0};
  size_t done_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

int DefaultThreads() {
  if (const char* env = std::getenv("S0_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

std::mutex g_pool_mu;
Pool& GetPool() {
  static Pool pool(DefaultThreads());
  return pool;
}

}  // namespace

int NumThreads() { return GetPool().size(); }

void SetNumThreads(int n) {
  std::lock_guard<std::mutex> l(g_pool_mu);
  GetPool().Resize(std::max(1, n));
}

void ParallelFor(size_t n, const std::function<void(size_t, size_t)>& fn, size_t min_grain) {
  if (n == 0) return;
  min_grain = std::max<size_t>(1, min_grain);
  if (t_inside_parallel || n <= min_grain) {
    fn(0, n);
    return;
  }
  // One caller at a time owns the pool; others (from other threads) wait here.
  std::lock_guard<std::mutex> l(g_pool_mu);
  Pool& pool = GetPool();
  size_t chunks = std::min<size_t>(size_t(pool.size()) * 4, (n + min_grain - 1) / min_grain);
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  size_t per = (n + chunks - 1) / chunks;
  chunks = (n + per - 1) / per;
  pool.Run(chunks, [&](size_t c) { fn(c * per, std::min(n, (c + 1) * per)); });
}

}  // namespace s0
