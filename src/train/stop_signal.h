// Owns the stop signals (SIGUSR1/SIGTERM, DESIGN §7 preemption): handled from process start, read by the loop.
#pragma once

namespace moe {

// Installs the stop handlers. Call first thing in main(): a signal that arrives while the model loads is
// remembered instead of killing the process, and the run stops at its first chance.
void install_stop_handlers();
// Holds stop signals back (pending) across an exec of the process image, which resets handlers;
// install_stop_handlers in the new image delivers them.
void block_stop_signals();
// After the config is known: with checkpoint.on_signal false the default actions come back, and a signal
// that already arrived is raised again (the process ends as it would have without moe-train's handlers).
void keep_stop_handlers(bool on_signal);
// The signal number received (SIGUSR1/SIGTERM), or 0.
int stop_signal_received();

}  // namespace moe
