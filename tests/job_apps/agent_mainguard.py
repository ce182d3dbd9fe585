"""User style (b): install() under `if __name__ == "__main__":`, before run_app."""

import driver

import livekit_segments
from livekit.agents import AgentServer, JobContext

server = AgentServer(**driver.server_kwargs())


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await driver.report_job(ctx)


if __name__ == "__main__":
    livekit_segments.install()
    driver.run_app(server)  # stands in for cli.run_app(server)
