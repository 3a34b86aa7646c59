// The pybind11 module fastmask._C: one register_* function per capability file.
#include <pybind11/pybind11.h>

#include "buffer_cache.h"
#include "common.h"

namespace py = pybind11;

namespace fastmask {
void register_masking(py::module_& m);        // masking.cpp
void register_cross_entropy(py::module_& m);  // cross_entropy.cpp
void register_collate(py::module_& m);        // collate.cpp
void register_completion_mask(py::module_& m);  // completion_labels.cpp
void register_span_corruption(py::module_& m);  // sentinel_spans.cpp
void register_ngrams(py::module_& m);  // ngrams.cpp
void register_text_infilling(py::module_& m);  // infilling.cpp
void register_tracker_update(py::module_& m);   // token_loss_tracker.cpp
void register_value_range(py::module_& m);      // value_range.cpp
}  // namespace fastmask

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastmask's C++ CPU kernels (masking, cross-entropy, collation, completion masks, span corruption) on plain buffers.";
  m.def("num_threads", &fastmask::num_threads, "Worker threads used by the C++ kernels.");
  m.def("set_num_threads", &fastmask::set_num_threads, py::arg("n"),
        "Set the C++ kernels' thread count (<= 0 restores the default).");
  m.def(
      "_pool_state",
      [] {
        const fastmask::PoolState state = fastmask::pool_state();
        py::dict d;
        d["threads"] = state.threads;
        d["workers"] = state.workers;
        d["creation_failed"] = state.creation_failed;
        d["builds"] = state.builds;
        return d;
      },
      "The thread pool as it stands: {threads, workers, creation_failed, builds}, for tests and info.");
  m.def(
      "lowbias32", [](uint32_t x) { return fastmask::lowbias32(x); }, py::arg("x"),
      "The generator's hash, for tests.");
  fastmask::register_masking(m);
  fastmask::register_cross_entropy(m);
  fastmask::register_buffer_cache(m);
  fastmask::register_collate(m);
  fastmask::register_completion_mask(m);
  fastmask::register_span_corruption(m);
  fastmask::register_ngrams(m);
  fastmask::register_text_infilling(m);
  fastmask::register_tracker_update(m);
  fastmask::register_value_range(m);
}
