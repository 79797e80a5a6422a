"""Speed and memory benchmarks of odt (issue 7). Run them all with `make bench`.

Each module measures one figure as a ratio of two things timed side by side in the
same process, repeated with the order alternated, so load from other processes on the
machine cancels out as far as possible. `benchmarks.run` writes reports/benchmarks.md.
"""
