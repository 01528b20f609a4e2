// Status and StatusOr: an error keeps its code and message; a StatusOr made from an OK status
// (a function that returned `Status::Ok()` where a value was due) is an error that says so.
#include <gtest/gtest.h>

#include "tpfuse/status.h"

namespace tpfuse {
namespace {

StatusOr<bool> ReturnsAnOkStatus() { return Status::Ok(); }

TEST(Status, AStatusOrOfAnErrorKeepsItsCodeAndMessage) {
  const StatusOr<int> r = InvalidArgument("bad ", 3);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "bad 3");
}

TEST(Status, AStatusOrMadeFromAnOkStatusIsAnInternalErrorThatSaysSo) {
  const StatusOr<bool> r = ReturnsAnOkStatus();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("made from an OK status"), std::string::npos)
      << r.status().message();
}

TEST(Status, AStatusOrOfAValueIsOk) {
  const StatusOr<int> r = 7;
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r.status().ok());
  EXPECT_EQ(*r, 7);
}

}  // namespace
}  // namespace tpfuse
