"""User style (a): install() at module top level."""

import driver

import livekit_segments
from livekit.agents import AgentServer, JobContext

livekit_segments.install()

server = AgentServer(**driver.server_kwargs())


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await driver.report_job(ctx)


if __name__ == "__main__":
    driver.run_app(server)  # stands in for cli.run_app(server)
