"""The course's own tooling: what instructors and CI use, and students never import.

``dlcloud`` is the student runtime (what a lab's student-facing code imports); this
package holds everything else: lab discovery and manifests, rendering the text sources
of the labs into notebooks, exports between labs, nbgrader's feedback preprocessor,
and the helpers of the benchmarks. Its entry points run as ``python -m dlcloud_course``.
"""
