"""Named straggling scenarios for `flexgc bench --scenario NAME` (docs/traces.md gives each model's sources).

A scenario is data: the cluster size, the delay spec every scheme faces (the same seeded realization),
how many workers are dead, and the iterations to run. They follow how measured clusters straggle: a mild
homogeneous GPU job, a two-class job whose slow half is 4-5x slower, a rare stall, a serverless heavy
tail, the replay of a real training trace at its own width, and dead workers. Every scheme trains the
same model on the same data, so the comparison is the time to a target loss (flexgc.targets).
"""

from __future__ import annotations

from dataclasses import dataclass

from flexgc.common.errors import ConfigError


@dataclass(frozen=True, slots=True)
class NamedScenario:
    """One row of the scenario table."""

    name: str
    n: int
    delay: str
    dead: int = 0            # dead workers (a seeded random choice of slots, the same for every scheme)
    iterations: int = 40
    about: str = ""          # what it models, one line


# unit_s makes an uncoded iteration about 100-200 ms of injected time at n = 10 (the lognormal presets'
# b = 1: a worker's factor times its share 1/n of the data), so injected delays dominate the loopback's
# own costs on a 2-core machine
SCENARIOS: dict[str, NamedScenario] = {s.name: s for s in (
    NamedScenario("mild", 10, "lognormal:preset=gpu-dp,ph=0,p=0,unit_s=1",
                  about="homogeneous GPU data-parallel job (Alibaba PAI jobs 1-3: sigma 0.07, no tail)"),
    NamedScenario("two-class", 10, "lognormal:preset=two-class,unit_s=0.4",
                  about="half the workers 4.3x slower for the whole job (Alibaba PAI job 4)"),
    NamedScenario("stall", 10, "lognormal:preset=gpu-dp,ph=0,p=0.001,unit_s=1", iterations=100,
                  about="mild job where a worker stalls (never answers) in 1% of iterations"),
    NamedScenario("heavy-tail", 10, "lognormal:preset=serverless,a=1,b=0.147,ph=0.025,fh=3,unit_s=0.15",
                  about="serverless workers, fixed cost a + b load, 2.5% of workers 3x slower (Lambda Canada)"),
    NamedScenario("se-replay", 32, "trace:file=bytedance-se,unit_s=3.2",
                  about="replay of a ByteDance LLM job's per-rank step times (32 ranks, 43 steps, looped)"),
    NamedScenario("dead-1", 10, "lognormal:preset=gpu-dp,ph=0,p=0,unit_s=1", dead=1,
                  about="the mild job with one worker dead for the whole run"),
    NamedScenario("dead-2", 10, "lognormal:preset=gpu-dp,ph=0,p=0,unit_s=1", dead=2,
                  about="the mild job with two workers dead for the whole run"),
)}

# the schemes a scenario bench compares by default: what users run today (uncoded synchronous training,
# backup workers), a fixed gradient code, the nested code, multi-message, and the nested code adapting
SCENARIO_SCHEMES = ("uncoded", "ignore:s=3", "crc:s=3", "nested:levels=0,1,2,3", "multimessage:smax=3",
                    "nested:levels=0,1,2,3+adapt")
# the job: softmax regression (multinomial logistic) on scikit-learn's digits, full batch
SCENARIO_JOB = {"model": "softmax", "data": "sklearn:digits"}


def named_scenarios(names: list[str]) -> list[NamedScenario]:
    """The scenarios `--scenario` names (`all`: every one), in the table's order; an unknown name is refused."""
    if "all" in names:
        return list(SCENARIOS.values())
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ConfigError(f"scenario={unknown[0]!r}; allowed: {', '.join(SCENARIOS)}, all")
    return [SCENARIOS[name] for name in dict.fromkeys(names)]
