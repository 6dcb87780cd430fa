# Puma for the test app: more threads than the tests' 16 clients, so that a
# request of the test is not starved behind them (Puma accepts a new
# connection only when a thread is free).
threads 32, 32
port ENV.fetch("PORT", 3000)
