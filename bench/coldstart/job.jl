# Timing wrapper of the cold-start benchmark (bench/coldstart): runs a job script
# exactly as the job would run, and stamps where the time goes, from inside Julia:
#
#   T0  first statement (so T0 - process start = runtime + sysimage load + init)
#   T1  after `using` of the job's packages     (CASBENCH_USING: "A" or "A, B, C")
#   T2  after the job script itself (its first call: compile + compute, prints CHECKSUM)
#   T3  after a second call (CASBENCH_AGAIN, a Julia expression; stdout to /dev/null):
#       the compute alone, everything compiled by then
#
# and prints `CASBENCH_TIMES T0 T1 T2 T3` (Unix seconds) on stderr.  ARGS are the job's.
# Straight-line top-level code only: no loops or closures, which Julia would have to
# compile in every process (the wrapper must cost the job next to nothing).
const CASBENCH_T0 = time()
isempty(get(ENV, "CASBENCH_USING", "")) ||
    Core.eval(Main, Meta.parse("using " * ENV["CASBENCH_USING"]))
const CASBENCH_T1 = time()
include(ENV["CASBENCH_SCRIPT"])
const CASBENCH_T2 = time()
const CASBENCH_STDOUT = stdout
const CASBENCH_NULL = open("/dev/null", "w")
redirect_stdout(CASBENCH_NULL)
Core.eval(Main, Meta.parse(ENV["CASBENCH_AGAIN"]))
redirect_stdout(CASBENCH_STDOUT)
const CASBENCH_T3 = time()
# One String, written as is: printing Float64s straight to a redirected stderr would
# compile `print` for that stream type in this process (~0.1 s, after T3).
write(stderr, string("CASBENCH_TIMES ", CASBENCH_T0, " ", CASBENCH_T1, " ", CASBENCH_T2, " ",
                     CASBENCH_T3, "\n"))
