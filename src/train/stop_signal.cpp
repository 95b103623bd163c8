// Owns the stop-signal flag and handlers: async-signal-safe (one sig_atomic_t store), installed at process start.
#include "train/stop_signal.h"

#include <pthread.h>
#include <signal.h>

#include <csignal>

namespace moe {

namespace {
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }
}  // namespace

void install_stop_handlers() {
  std::signal(SIGUSR1, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  // A signal held back across a re-exec (block_stop_signals) is delivered to the handler now.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

void block_stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

void keep_stop_handlers(bool on_signal) {
  if (on_signal) return;
  std::signal(SIGUSR1, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
  if (g_stop_signal != 0) std::raise(g_stop_signal);
}

int stop_signal_received() { return g_stop_signal; }

}  // namespace moe
