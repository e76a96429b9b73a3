// Machine facts used for defaults: CPUs this process may run on, and distinct physical cores.
#include <gtest/gtest.h>

#include <sched.h>

#include "util/sysinfo.h"

namespace fm {
namespace {

TEST(sysinfo, CoresAreBetweenOneAndTheCpus) {
  const int cpus = hardware_threads(), cores = physical_cores();
  EXPECT_GE(cores, 1);
  EXPECT_LE(cores, cpus);
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_EQ(cpus, CPU_COUNT(&set));
}

TEST(sysinfo, FollowsTheAffinityMask) {
  cpu_set_t saved, one;
  ASSERT_EQ(sched_getaffinity(0, sizeof saved, &saved), 0);
  int first = 0;
  while (!CPU_ISSET(first, &saved)) ++first;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  const int cpus = hardware_threads(), cores = physical_cores();
  ASSERT_EQ(sched_setaffinity(0, sizeof saved, &saved), 0);
  EXPECT_EQ(cpus, 1);
  EXPECT_EQ(cores, 1);
}

}  // namespace
}  // namespace fm
