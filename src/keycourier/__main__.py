from keycourier.cli.main import run

run()
