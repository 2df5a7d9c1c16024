from zhongjing.cli import main

if __name__ == "__main__":  # not when a spawned child process (serve's engine process) imports this module
    raise SystemExit(main())
