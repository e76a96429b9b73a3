// The io_uring backend: one thread owns one ring of depth threads * split. It takes pieces from the
// queues while the ring has room, submits them, and sleeps in the ring until a read completes or an
// eventfd (polled through the same ring) says that work was queued or the engine is stopping. Reads
// that return fewer bytes than asked are resubmitted for the rest, as pread_piece does.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "io/io_internal.h"
#include "util/error.h"

namespace fm::io {

namespace {

constexpr uint64_t kWakeTag = ~uint64_t(0);  // user_data of the eventfd poll; reads use their slot index

struct Slot {
  Piece piece;
  Fault fault;
  uint64_t got = 0;
};

io_uring_sqe* next_sqe(io_uring* ring) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  FM_CHECK(sqe != nullptr, "io_uring submission queue full");
  return sqe;
}

void arm_wake(io_uring* ring, int wake_fd) {
  io_uring_sqe* sqe = next_sqe(ring);
  io_uring_prep_poll_add(sqe, wake_fd, POLLIN);
  io_uring_sqe_set_data64(sqe, kWakeTag);
}

void prep_read(io_uring* ring, const Slot& s, uint64_t index) {
  io_uring_sqe* sqe = next_sqe(ring);
  io_uring_prep_read(sqe, s.piece.fd, s.piece.dst + s.got, unsigned(s.piece.length - s.got),
                     s.piece.offset + s.got);
  io_uring_sqe_set_data64(sqe, index);
}

}  // namespace

void IoEngine::Impl::uring_init() {
  const unsigned depth = unsigned(options.threads) * unsigned(options.split);
  wake_fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd < 0) fail("cannot create an eventfd for io_uring: {}", std::generic_category().message(errno));
  const int r = io_uring_queue_init(depth + 1, &ring, 0);  // + 1: the eventfd poll
  if (r < 0) {
    fail("io_uring is not available here ({}); use the pread backend", std::generic_category().message(-r));
  }
  ring_ready = true;
}

void IoEngine::Impl::uring_loop() {
  const size_t depth = size_t(options.threads) * size_t(options.split);
  std::vector<Slot> slots(depth);
  std::vector<uint64_t> free_slots;
  for (size_t i = depth; i-- > 0;) free_slots.push_back(i);
  std::vector<Piece> taken;
  arm_wake(&ring, wake_fd);
  size_t in_flight = 0;

  for (;;) {
    std::shared_ptr<const FaultInjector> inj;
    taken.clear();
    {
      std::lock_guard lock(mutex);
      if (stopping && in_flight == 0) break;
      while (!stopping && in_flight + taken.size() < depth && has_work()) taken.push_back(take_piece());
      inj = injector;
    }
    for (const Piece& piece : taken) {
      const Fault fault = inject(inj, piece);
      if (fault.error != 0) {
        finish_piece(piece, fault.error, 0);
        continue;
      }
      const uint64_t index = free_slots.back();
      free_slots.pop_back();
      slots[index] = Slot{piece, fault, 0};
      prep_read(&ring, slots[index], index);
      in_flight++;
    }
    int r = io_uring_submit(&ring);
    FM_CHECK(r >= 0 || r == -EINTR || r == -EAGAIN || r == -EBUSY, "io_uring_submit: {}",
             std::generic_category().message(-r));
    // Pieces failed by the injector took no ring slot: look at the queues again before sleeping.
    if (!taken.empty() && in_flight < depth) continue;

    io_uring_cqe* cqe = nullptr;
    r = io_uring_wait_cqe(&ring, &cqe);
    if (r == -EINTR) continue;
    FM_CHECK(r == 0, "io_uring_wait_cqe: {}", std::generic_category().message(-r));
    unsigned head = 0, seen = 0;
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      const uint64_t index = io_uring_cqe_get_data64(cqe);
      const int res = cqe->res;
      if (index == kWakeTag) {
        uint64_t count;
        [[maybe_unused]] ssize_t n = ::read(wake_fd, &count, sizeof count);
        arm_wake(&ring, wake_fd);
        continue;
      }
      Slot& s = slots[index];
      if (res == -EINTR || res == -EAGAIN) {
        prep_read(&ring, s, index);
        continue;
      }
      if (res > 0) {
        s.got += uint64_t(res);
        // A partial read is continued unless it is the end of the file (with O_DIRECT: an unaligned end).
        if (s.got < s.piece.length && (!options.direct || s.got % kAlign == 0)) {
          prep_read(&ring, s, index);
          continue;
        }
      }
      finish_piece(s.piece, res < 0 ? -res : 0, apply_short(s.got, s.fault));
      free_slots.push_back(index);
      in_flight--;
    }
    io_uring_cq_advance(&ring, seen);
  }
}

}  // namespace fm::io
